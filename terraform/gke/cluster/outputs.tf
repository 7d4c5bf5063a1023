# Everything the app stage (../app) reads through terraform_remote_state, and what an operator
# needs to reach the cluster.

output "project_id" {
  description = "Project holding the cluster and the data stores."
  value       = var.project_id
}

output "region" {
  description = "Region of the cluster and the data stores."
  value       = var.region
}

output "cluster_name" {
  description = "Name of the GKE cluster."
  value       = google_container_cluster.this.name
}

output "cluster_private_endpoint_only" {
  description = "The control plane has no public address (enable_private_endpoint): the app stage dials its private endpoint."
  value       = var.enable_private_endpoint
}

output "get_credentials_command" {
  description = "Command that writes a kubeconfig entry for the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.this.name} --region ${var.region} --project ${var.project_id}${var.enable_private_endpoint ? " --internal-ip" : ""}"
}

output "app_namespace" {
  description = "Kubernetes namespace of FlashSale (bound to the app's Google service account)."
  value       = var.app_namespace
}

output "app_service_account" {
  description = "Kubernetes service account of the FlashSale pods (bound to the app's Google service account)."
  value       = var.app_service_account
}

output "app_google_service_account" {
  description = "Google service account the FlashSale pods act as (Workload Identity)."
  value       = google_service_account.app.email
}

output "redis_topology" {
  description = "single-primary (Memorystore for Redis) or cluster (Memorystore for Redis Cluster)."
  value       = var.redis_topology
}

output "redis_host" {
  description = "Private address of Memorystore: the instance, or the cluster's discovery endpoint."
  value       = local.redis_host
}

output "redis_port" {
  description = "Port of Memorystore (6378 on the instance with TLS; the cluster's discovery endpoint port)."
  value       = local.redis_port
}

output "redis_node_port_range" {
  description = "Further ports the cluster's nodes listen on ({from, to}); null for the single-primary instance."
  value       = local.redis_node_port_range
}

output "redis_url" {
  description = "REDIS_URL of Memorystore (rediss://, with the AUTH string on the instance and the server CA)."
  value       = local.redis_url
  sensitive   = true
}

output "database_instance" {
  description = "Cloud SQL instance connection name (project:region:instance)."
  value       = google_sql_database_instance.this.connection_name
}

output "database_private_ip" {
  description = "Private address of Cloud SQL."
  value       = google_sql_database_instance.this.private_ip_address
}

output "database_url" {
  description = "DATABASE_URL of Cloud SQL (user, password, private address, sslmode=require)."
  value       = local.database_url
  sensitive   = true
}

output "data_store_cidrs" {
  description = "Address ranges of Memorystore and Cloud SQL: the only places FlashSale pods may reach on the data-store ports."
  value       = local.data_store_cidrs
}
