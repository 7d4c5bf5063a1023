# Memorystore for Redis: a primary and a replica in two zones with automatic failover, reached
# only through private service access, with AUTH and TLS (the client verifies the instance's
# own certificate authority, which travels inside REDIS_URL).

resource "google_redis_instance" "this" {
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

locals {
  # Every CA certificate the instance currently presents (more than one during a CA rotation).
  redis_ca_pem = join("\n", [for c in google_redis_instance.this.server_ca_certs : c.cert])

  # rediss:// + AUTH; redis-py reads ssl_* arguments from the query string. The chain must lead
  # to this instance's own CA (no other server holds a certificate it signed), so the check does
  # not also depend on the certificate naming the IP address the client dials.
  redis_url = format(
    "rediss://:%s@%s:%d/0?ssl_cert_reqs=required&ssl_check_hostname=false&ssl_ca_data=%s",
    urlencode(google_redis_instance.this.auth_string),
    google_redis_instance.this.host,
    google_redis_instance.this.port,
    urlencode(local.redis_ca_pem),
  )
}
