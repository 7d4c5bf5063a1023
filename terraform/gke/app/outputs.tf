output "ingress_address" {
  description = "Public IP of the HAProxy load balancer: point the shop's DNS name at it."
  value       = module.flashsale.ingress_address
}

output "ingress_service" {
  description = "Namespace and name of the HAProxy LoadBalancer Service."
  value       = module.flashsale.ingress_service
}

output "namespace" {
  description = "Namespace of the FlashSale release."
  value       = module.flashsale.namespace
}

output "release_name" {
  description = "Helm release name of FlashSale."
  value       = module.flashsale.release_name
}

output "redis_cluster" {
  description = "FlashSale was told to use Redis Cluster (externalRedis.cluster = \"true\")."
  value       = local.cluster.redis_topology == "cluster"
}

output "admin_token" {
  description = "FLASHSALE_ADMIN_TOKEN (terraform output -raw admin_token)."
  value       = module.flashsale.admin_token
  sensitive   = true
}
