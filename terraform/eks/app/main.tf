# FlashSale on the cluster the cluster stage created: its Secrets, the HAProxy ingress
# controller and the chart, pointed at ElastiCache and RDS.

module "flashsale" {
  source = "../../modules/flashsale"

  namespace        = var.app_namespace
  chart_path       = var.chart_path
  image_repository = var.image_repository
  image_tag        = var.image_tag

  redis_url    = local.cluster.redis_url
  database_url = local.cluster.database_url
  redis_port   = local.cluster.redis_port
  # ElastiCache cluster mode: FlashSale speaks Redis Cluster (every node listens on redis_port).
  redis_cluster    = local.cluster.redis_topology == "cluster"
  data_store_cidrs = local.cluster.data_store_cidrs

  token_key          = var.token_key
  token_key_previous = var.token_key_previous
  admin_token        = var.admin_token

  api_autoscaling = {
    min_replicas = var.api_min_replicas
    max_replicas = var.api_max_replicas
  }
  ingress_host = var.ingress_host
  labels       = { "flashsale.io/cloud" = "eks" }

  # A Network Load Balancer in front of HAProxy, spread over every zone.
  ingress_controller_service_annotations = {
    "service.beta.kubernetes.io/aws-load-balancer-type"                              = "nlb"
    "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled" = "true"
  }
}
