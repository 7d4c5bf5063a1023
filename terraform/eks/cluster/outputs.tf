# Everything the app stage (../app) reads through terraform_remote_state, and what an operator
# needs to reach the cluster.

output "region" {
  description = "Region of the cluster and the data stores."
  value       = var.region
}

output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = module.eks.cluster_name
}

output "kubernetes_version" {
  description = "Kubernetes version of the cluster (the Cluster Autoscaler's image follows it)."
  value       = var.kubernetes_version
}

output "update_kubeconfig_command" {
  description = "Command that writes a kubeconfig entry for the cluster."
  value       = "aws eks update-kubeconfig --name ${module.eks.cluster_name} --region ${var.region}"
}

output "cluster_autoscaler_service_account" {
  description = "Namespace and name of the Kubernetes service account the Cluster Autoscaler must run as (bound to its IAM role by EKS Pod Identity)."
  value = {
    namespace = aws_eks_pod_identity_association.cluster_autoscaler.namespace
    name      = aws_eks_pod_identity_association.cluster_autoscaler.service_account
  }
}

output "vpc_id" {
  description = "ID of the VPC."
  value       = module.vpc.vpc_id
}

output "redis_topology" {
  description = "single-primary (cluster mode disabled) or cluster (cluster mode enabled)."
  value       = var.redis_topology
}

output "redis_endpoint" {
  description = "The replication group's primary endpoint (single-primary) or configuration endpoint (cluster); TLS and AUTH."
  value       = local.redis_host
}

output "redis_port" {
  description = "Port of ElastiCache."
  value       = local.redis_port
}

output "redis_url" {
  description = "REDIS_URL of ElastiCache (rediss://, with the AUTH token)."
  value       = local.redis_url
  sensitive   = true
}

output "database_endpoint" {
  description = "Address of the RDS PostgreSQL instance (private, TLS required)."
  value       = aws_db_instance.this.address
}

output "database_url" {
  description = "DATABASE_URL of RDS (user, password, private address, sslmode=require)."
  value       = local.database_url
  sensitive   = true
}

output "data_store_cidrs" {
  description = "Subnets of ElastiCache and RDS: the only places FlashSale pods may reach on the data-store ports."
  value = concat(
    module.vpc.elasticache_subnets_cidr_blocks,
    module.vpc.database_subnets_cidr_blocks,
  )
}
