# Redis, one of two topologies (var.redis_topology):
#
#   single-primary  Memorystore for Redis STANDARD_HA: a primary and a replica in two zones with
#                   automatic failover, reached through private service access, with AUTH and
#                   TLS (the client verifies the instance's own certificate authority, which
#                   travels inside REDIS_URL).
#   cluster         Memorystore for Redis Cluster: redis_cluster_shard_count shards of a primary
#                   and redis_cluster_replica_count replicas spread over the region's zones,
#                   reached through Private Service Connect endpoints in a subnet of this VPC,
#                   with TLS (the cluster's own certificate authority travels inside REDIS_URL).
#                   The provider's authorization modes are IAM access tokens (AUTH_MODE_IAM_AUTH),
#                   which FlashSale does not mint, or none; the cluster is therefore created
#                   without AUTH and is reachable only from this VPC, and the chart's
#                   NetworkPolicy lets only FlashSale pods reach its endpoints.

# -- single-primary -----------------------------------------------------------------------------

resource "google_redis_instance" "this" {
  count = local.redis_cluster ? 0 : 1

  name           = "${var.name}-redis"
  display_name   = "FlashSale waiting rooms and stock"
  region         = var.region
  tier           = "STANDARD_HA"
  memory_size_gb = var.redis_memory_size_gb
  redis_version  = var.redis_version
  labels         = local.labels

  authorized_network = google_compute_network.this.id
  connect_mode       = "PRIVATE_SERVICE_ACCESS"

  auth_enabled            = true
  transit_encryption_mode = "SERVER_AUTHENTICATION"

  redis_configs = {
    # Holds, admissions and rate-limit windows expire: evict nothing else under pressure.
    maxmemory-policy = "volatile-lru"
  }

  maintenance_policy {
    weekly_maintenance_window {
      day = "TUESDAY"
      start_time {
        hours   = 3
        minutes = 0
      }
    }
  }

  depends_on = [google_service_networking_connection.private_services]
}

# The instance had no index before redis_topology existed.
moved {
  from = google_redis_instance.this
  to   = google_redis_instance.this[0]
}

# -- cluster ------------------------------------------------------------------------------------

# Memorystore for Redis Cluster puts its Private Service Connect endpoints (the discovery
# endpoint and one per node) into a subnet of this VPC named by a service connection policy.
resource "google_compute_subnetwork" "redis_psc" {
  count = local.redis_cluster ? 1 : 0

  name                     = "${var.name}-redis-psc"
  network                  = google_compute_network.this.id
  region                   = var.region
  ip_cidr_range            = var.redis_cluster_psc_subnet_cidr
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_5_SEC"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_network_connectivity_service_connection_policy" "redis" {
  count = local.redis_cluster ? 1 : 0

  name          = "${var.name}-redis"
  location      = var.region
  service_class = "gcp-memorystore-redis"
  description   = "FlashSale: Memorystore for Redis Cluster endpoints in ${var.name}-redis-psc"
  network       = google_compute_network.this.id

  psc_config {
    subnetworks = [google_compute_subnetwork.redis_psc[0].id]
  }

  depends_on = [google_project_service.this]
}

resource "google_redis_cluster" "this" {
  count = local.redis_cluster ? 1 : 0

  name          = "${var.name}-redis"
  region        = var.region
  shard_count   = var.redis_cluster_shard_count
  replica_count = var.redis_cluster_replica_count
  node_type     = var.redis_cluster_node_type

  psc_configs {
    network = google_compute_network.this.id
  }

  zone_distribution_config {
    mode = "MULTI_ZONE"
  }

  transit_encryption_mode     = "TRANSIT_ENCRYPTION_MODE_SERVER_AUTHENTICATION"
  authorization_mode          = "AUTH_MODE_DISABLED"
  deletion_protection_enabled = var.redis_cluster_deletion_protection

  redis_configs = {
    # Holds, admissions and rate-limit windows expire: evict nothing else under pressure.
    maxmemory-policy = "volatile-lru"
  }

  maintenance_policy {
    weekly_maintenance_window {
      day = "TUESDAY"
      start_time {
        hours   = 3
        minutes = 0
      }
    }
  }

  depends_on = [google_network_connectivity_service_connection_policy.redis]
}

locals {
  # Every CA certificate the single-primary instance currently presents (more than one during a
  # CA rotation), or the cluster's CA chains.
  redis_ca_pem = local.redis_cluster ? join("\n", flatten([
    for chain in google_redis_cluster.this[0].managed_server_ca[0].ca_certs : chain.certificates
  ])) : join("\n", [for c in google_redis_instance.this[0].server_ca_certs : c.cert])

  redis_host = local.redis_cluster ? google_redis_cluster.this[0].discovery_endpoints[0].address : google_redis_instance.this[0].host
  redis_port = local.redis_cluster ? google_redis_cluster.this[0].discovery_endpoints[0].port : google_redis_instance.this[0].port

  # rediss:// (+ AUTH on the instance); redis-py reads ssl_* arguments from the query string.
  # The chain must lead to this instance's (or cluster's) own CA, which signs no other server's
  # certificate, so the check does not also depend on the certificate naming the IP address the
  # client dials. On the cluster this is the discovery endpoint: the client learns every node
  # from it (CLUSTER SLOTS).
  redis_url = local.redis_cluster ? format(
    "rediss://%s:%d/0?ssl_cert_reqs=required&ssl_check_hostname=false&ssl_ca_data=%s",
    local.redis_host,
    local.redis_port,
    urlencode(local.redis_ca_pem),
    ) : format(
    "rediss://:%s@%s:%d/0?ssl_cert_reqs=required&ssl_check_hostname=false&ssl_ca_data=%s",
    urlencode(google_redis_instance.this[0].auth_string),
    local.redis_host,
    local.redis_port,
    urlencode(local.redis_ca_pem),
  )

  # The cluster's nodes listen on these ports at their Private Service Connect addresses, besides
  # the discovery endpoint's port (Memorystore for Redis Cluster: TCP 6379 and 11000-13047).
  redis_node_port_range = local.redis_cluster ? { from = 11000, to = 13047 } : null

  # Where FlashSale pods may reach the data stores: the private service access range (Cloud SQL,
  # and the single-primary Memorystore instance), and the cluster's endpoint subnet.
  data_store_cidrs = concat(
    ["${google_compute_global_address.private_services.address}/${google_compute_global_address.private_services.prefix_length}"],
    local.redis_cluster ? [var.redis_cluster_psc_subnet_cidr] : [],
  )
}
