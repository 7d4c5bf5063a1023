# Cloud SQL for PostgreSQL: regional (synchronous standby in another zone), private IP only,
# TLS required, daily backups with point-in-time recovery, deletion protection.

resource "random_id" "db_suffix" {
  # Cloud SQL instance names cannot be reused for a week after deletion.
  byte_length = 3
}

resource "google_sql_database_instance" "this" {
  #checkov:skip=CKV_GCP_6:ssl_mode ENCRYPTED_ONLY refuses every unencrypted connection; client certificates (TRUSTED_CLIENT_CERTIFICATE_REQUIRED) would need per-pod key files the chart does not mount, and the instance has no public IP
  name                = "${var.name}-pg-${random_id.db_suffix.hex}"
  region              = var.region
  database_version    = var.db_version
  deletion_protection = var.db_deletion_protection

  settings {
    tier                        = var.db_tier
    edition                     = "ENTERPRISE"
    availability_type           = "REGIONAL"
    disk_type                   = "PD_SSD"
    disk_size                   = var.db_disk_size_gb
    disk_autoresize             = true
    deletion_protection_enabled = var.db_deletion_protection
    user_labels                 = local.labels

    ip_configuration {
      ipv4_enabled    = false
      private_network = google_compute_network.this.id
      ssl_mode        = "ENCRYPTED_ONLY"
    }

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
      start_time                     = "02:00"
      transaction_log_retention_days = 7

      backup_retention_settings {
        retained_backups = var.db_backup_retained_count
        retention_unit   = "COUNT"
      }
    }

    maintenance_window {
      day          = 2
      hour         = 4
      update_track = "stable"
    }

    insights_config {
      query_insights_enabled  = true
      record_application_tags = true
      record_client_address   = false
    }

    # Audit-friendly logging (CIS Google Cloud benchmark, section 6.2).
    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "warning"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
    database_flags {
      name  = "log_duration"
      value = "on"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
  }

  depends_on = [google_service_networking_connection.private_services]
}

resource "google_sql_database" "flashsale" {
  name     = "flashsale"
  instance = google_sql_database_instance.this.name
}

resource "random_password" "db" {
  length           = 32
  special          = true
  override_special = "-_.~"
}

resource "google_sql_user" "flashsale" {
  name     = "flashsale"
  instance = google_sql_database_instance.this.name
  password = random_password.db.result
}

locals {
  database_url = format(
    "postgresql://%s:%s@%s:5432/%s?sslmode=require",
    google_sql_user.flashsale.name,
    urlencode(random_password.db.result),
    google_sql_database_instance.this.private_ip_address,
    google_sql_database.flashsale.name,
  )
}
