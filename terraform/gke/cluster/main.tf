locals {
  labels = merge(var.labels, {
    app        = "flashsale"
    managed-by = "terraform"
  })

  # Memorystore for Redis Cluster (redis_topology = "cluster") instead of a single-primary
  # Memorystore for Redis instance.
  redis_cluster = var.redis_topology == "cluster"

  apis = toset(concat(
    [
      "binaryauthorization.googleapis.com",
      "cloudresourcemanager.googleapis.com",
      "compute.googleapis.com",
      "container.googleapis.com",
      "iam.googleapis.com",
      "redis.googleapis.com",
      "servicenetworking.googleapis.com",
      "sqladmin.googleapis.com",
    ],
    # Private Service Connect for Memorystore for Redis Cluster (service connection policy).
    local.redis_cluster ? ["networkconnectivity.googleapis.com", "serviceconsumermanagement.googleapis.com"] : [],
  ))
}

resource "google_project_service" "this" {
  for_each = local.apis

  service = each.value
  # Turning an API off on destroy would break anything else in the project that uses it.
  disable_on_destroy = false
}
