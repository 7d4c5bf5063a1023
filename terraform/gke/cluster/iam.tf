# The application's identity: a Google service account its pods act as through Workload
# Identity (no key files). It needs no project role to reach Memorystore or Cloud SQL over
# private addresses; grant it roles here if FlashSale ever calls Google APIs.
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
