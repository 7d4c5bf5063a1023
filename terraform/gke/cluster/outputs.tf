output "cluster_name" {
  description = "Name of the GKE cluster."
  value       = google_container_cluster.this.name
}

output "get_credentials_command" {
  description = "Command that writes a kubeconfig entry for the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.this.name} --region ${var.region} --project ${var.project_id}${var.enable_private_endpoint ? " --internal-ip" : ""}"
}

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

output "redis_host" {
  description = "Private address of Memorystore (TLS on redis_port)."
  value       = google_redis_instance.this.host
}

output "redis_port" {
  description = "Port of Memorystore (6378 with TLS)."
  value       = google_redis_instance.this.port
}

output "database_instance" {
  description = "Cloud SQL instance connection name (project:region:instance)."
  value       = google_sql_database_instance.this.connection_name
}

output "database_private_ip" {
  description = "Private address of Cloud SQL."
  value       = google_sql_database_instance.this.private_ip_address
}

output "app_google_service_account" {
  description = "Google service account the FlashSale pods act as."
  value       = google_service_account.app.email
}

output "admin_token" {
  description = "FLASHSALE_ADMIN_TOKEN (terraform output -raw admin_token)."
  value       = module.flashsale.admin_token
  sensitive   = true
}
