# The application's identity: a Google service account its pods act as through Workload
# Identity (no key files). It needs no project role to reach Memorystore or Cloud SQL over
# private IP; grant it roles here if FlashSale ever calls Google APIs.
resource "google_service_account" "app" {
  account_id   = "${var.name}-app"
  display_name = "FlashSale application (Workload Identity)"
}

resource "google_service_account_iam_member" "app_workload_identity" {
  service_account_id = google_service_account.app.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.app_namespace}/${var.app_service_account}]"

  # The identity pool exists once the cluster does.
  depends_on = [google_container_cluster.this]
}

module "flashsale" {
  source = "../modules/flashsale"

  namespace            = var.app_namespace
  chart_path           = var.chart_path
  image_repository     = var.image_repository
  image_tag            = var.image_tag
  service_account_name = var.app_service_account
  service_account_annotations = {
    "iam.gke.io/gcp-service-account" = google_service_account.app.email
  }

  redis_url    = local.redis_url
  database_url = local.database_url
  redis_port   = google_redis_instance.this.port
  # Memorystore and Cloud SQL both take their addresses from the private service access range.
  data_store_cidrs = [
    "${google_compute_global_address.private_services.address}/${google_compute_global_address.private_services.prefix_length}",
  ]
  token_key          = var.token_key
  token_key_previous = var.token_key_previous
  admin_token        = var.admin_token

  api_autoscaling = {
    min_replicas = var.api_min_replicas
    max_replicas = var.api_max_replicas
  }
  ingress_host = var.ingress_host
  labels       = { "flashsale.io/cloud" = "gke" }

  depends_on = [
    google_container_node_pool.app,
    google_service_account_iam_member.app_workload_identity,
    google_sql_database.flashsale,
  ]
}
