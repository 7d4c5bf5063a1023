locals {
  labels = merge(var.labels, {
    app        = "flashsale"
    managed-by = "terraform"
  })

  apis = toset([
    "binaryauthorization.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "compute.googleapis.com",
    "container.googleapis.com",
    "iam.googleapis.com",
    "redis.googleapis.com",
    "servicenetworking.googleapis.com",
    "sqladmin.googleapis.com",
  ])
}

resource "google_project_service" "this" {
  for_each = local.apis

  service = each.value
  # Turning an API off on destroy would break anything else in the project that uses it.
  disable_on_destroy = false
}
