# FlashSale on the cluster the cluster stage created: its Secrets, the HAProxy ingress
# controller and the chart, pointed at Memorystore and Cloud SQL.

module "flashsale" {
  source = "../../modules/flashsale"

  namespace            = local.cluster.app_namespace
  chart_path           = var.chart_path
  image_repository     = var.image_repository
  image_tag            = var.image_tag
  service_account_name = local.cluster.app_service_account
  service_account_annotations = {
    "iam.gke.io/gcp-service-account" = local.cluster.app_google_service_account
  }

  redis_url    = local.cluster.redis_url
  database_url = local.cluster.database_url
  redis_port   = local.cluster.redis_port
  # Memorystore for Redis Cluster: FlashSale speaks Redis Cluster, and its pods may also reach
  # the nodes' own ports. (Terraform keeps no null root output in a state, hence the try.)
  redis_cluster         = local.cluster.redis_topology == "cluster"
  redis_node_port_range = try(local.cluster.redis_node_port_range, null)
  data_store_cidrs      = local.cluster.data_store_cidrs

  token_key          = var.token_key
  token_key_previous = var.token_key_previous
  admin_token        = var.admin_token

  api_autoscaling = {
    min_replicas = var.api_min_replicas
    max_replicas = var.api_max_replicas
  }
  ingress_host = var.ingress_host
  labels       = { "flashsale.io/cloud" = "gke" }
}
