output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = module.eks.cluster_name
}

output "update_kubeconfig_command" {
  description = "Command that writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --name ${module.eks.cluster_name} --region ${var.region}"
}

output "ingress_address" {
  description = "DNS name of the Network Load Balancer in front of HAProxy: point the shop's DNS name at it (CNAME or alias)."
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

output "vpc_id" {
  description = "ID of the VPC."
  value       = module.vpc.vpc_id
}

output "redis_primary_endpoint" {
  description = "Primary endpoint of the ElastiCache replication group (TLS, AUTH)."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "database_endpoint" {
  description = "Address of the RDS PostgreSQL instance (private, TLS required)."
  value       = aws_db_instance.this.address
}

output "admin_token" {
  description = "FLASHSALE_ADMIN_TOKEN (terraform output -raw admin_token)."
  value       = module.flashsale.admin_token
  sensitive   = true
}
