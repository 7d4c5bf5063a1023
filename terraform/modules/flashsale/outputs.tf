output "namespace" {
  description = "Namespace of the FlashSale release."
  value       = helm_release.flashsale.namespace
}

output "release_name" {
  description = "Helm release name of FlashSale."
  value       = helm_release.flashsale.name
}

output "release_status" {
  description = "Status of the FlashSale Helm release (deployed when every pod became ready)."
  value       = helm_release.flashsale.status
}

output "service_account_name" {
  description = "Kubernetes service account of the FlashSale pods."
  value       = var.service_account_name
}

output "secret_names" {
  description = "Kubernetes Secrets holding REDIS_URL, DATABASE_URL and the token keys."
  value = {
    redis    = kubernetes_secret_v1.redis.metadata[0].name
    database = kubernetes_secret_v1.database.metadata[0].name
    tokens   = kubernetes_secret_v1.tokens.metadata[0].name
  }
}

output "ingress_service" {
  description = "The HAProxy ingress controller's LoadBalancer Service (namespace/name); null when not installed here."
  value = var.install_ingress_controller ? {
    namespace = var.ingress_controller_namespace
    name      = local.ingress_controller_service
  } : null
}

output "ingress_address" {
  description = "Public IP or host name of the HAProxy load balancer (empty until the cloud has assigned it)."
  value = try(compact([
    try(data.kubernetes_service_v1.ingress_controller[0].status[0].load_balancer[0].ingress[0].ip, ""),
    try(data.kubernetes_service_v1.ingress_controller[0].status[0].load_balancer[0].ingress[0].hostname, ""),
  ])[0], "")
}

output "admin_token" {
  description = "FLASHSALE_ADMIN_TOKEN (bearer token of /admin/*)."
  value       = coalesce(var.admin_token, random_password.admin_token.result)
  sensitive   = true
}
