# terraform test (mocked providers): run from terraform/gke/cluster with
#   terraform init -backend=false && terraform test
# (init downloads the providers once; the plans below run against mocks, no cloud account)

mock_provider "google" {
  mock_resource "google_redis_instance" {
    defaults = {
      host = "10.100.0.3"
      port = 6378
      server_ca_certs = [{
        cert = "-----BEGIN CERTIFICATE-----\nMOCK\n-----END CERTIFICATE-----\n"
      }]
    }
  }

  mock_resource "google_redis_cluster" {
    defaults = {
      discovery_endpoints = [{
        address    = "10.10.16.3"
        port       = 6379
        psc_config = [{ network = "projects/flashsale-test/global/networks/flashsale-vpc" }]
      }]
      managed_server_ca = [{
        ca_certs = [{
          certificates = ["-----BEGIN CERTIFICATE-----\nMOCK\n-----END CERTIFICATE-----\n"]
        }]
      }]
    }
  }

  mock_resource "google_sql_database_instance" {
    defaults = {
      private_ip_address = "10.100.1.5"
      connection_name    = "flashsale-test:us-central1:flashsale-pg"
    }
  }
}

mock_provider "random" {}

variables {
  project_id = "flashsale-test"
  master_authorized_networks = [{
    cidr_block   = "203.0.113.0/24"
    display_name = "office"
  }]
}

run "cluster_is_private_regional_and_hardened" {
  command = plan

  assert {
    condition     = google_container_cluster.this.location == "us-central1"
    error_message = "The cluster must be regional."
  }

  assert {
    condition     = google_container_cluster.this.private_cluster_config[0].enable_private_nodes
    error_message = "Nodes must have private addresses only."
  }

  assert {
    condition     = google_container_cluster.this.workload_identity_config[0].workload_pool == "flashsale-test.svc.id.goog"
    error_message = "Workload Identity must be on."
  }

  assert {
    condition     = google_container_cluster.this.enable_shielded_nodes && google_container_cluster.this.network_policy[0].enabled
    error_message = "Shielded nodes and network policy must be on."
  }

  assert {
    condition     = google_container_cluster.this.release_channel[0].channel == "REGULAR"
    error_message = "The cluster must follow a release channel."
  }

  assert {
    condition     = toset([for b in google_container_cluster.this.master_authorized_networks_config[0].cidr_blocks : b.cidr_block]) == toset(["203.0.113.0/24"])
    error_message = "Only the listed networks may reach the control plane."
  }

  assert {
    condition     = google_container_node_pool.app.autoscaling[0].total_min_node_count == 3 && google_container_node_pool.app.autoscaling[0].total_max_node_count == 12
    error_message = "The node pool must autoscale between node_min_count and node_max_count."
  }

  assert {
    condition     = length(google_compute_subnetwork.nodes.secondary_ip_range) == 2
    error_message = "The subnet needs secondary ranges for pods and services."
  }
}

run "data_stores_are_private_encrypted_and_backed_up" {
  command = plan

  assert {
    condition     = google_redis_instance.this[0].tier == "STANDARD_HA" && google_redis_instance.this[0].auth_enabled
    error_message = "Memorystore must be STANDARD_HA with AUTH."
  }

  assert {
    condition     = google_redis_instance.this[0].transit_encryption_mode == "SERVER_AUTHENTICATION"
    error_message = "Memorystore must encrypt in transit."
  }

  assert {
    condition     = google_redis_instance.this[0].connect_mode == "PRIVATE_SERVICE_ACCESS"
    error_message = "Memorystore must be reached through private service access."
  }

  assert {
    condition     = google_sql_database_instance.this.settings[0].ip_configuration[0].ipv4_enabled == false
    error_message = "Cloud SQL must have no public IP."
  }

  assert {
    condition     = google_sql_database_instance.this.settings[0].ip_configuration[0].ssl_mode == "ENCRYPTED_ONLY"
    error_message = "Cloud SQL must refuse unencrypted connections."
  }

  assert {
    condition = (
      google_sql_database_instance.this.settings[0].backup_configuration[0].enabled &&
      google_sql_database_instance.this.settings[0].backup_configuration[0].point_in_time_recovery_enabled
    )
    error_message = "Cloud SQL backups and point-in-time recovery must be on."
  }

  assert {
    condition     = google_sql_database_instance.this.settings[0].availability_type == "REGIONAL" && google_sql_database_instance.this.deletion_protection
    error_message = "Cloud SQL must be regional and protected from deletion."
  }

  assert {
    condition     = google_service_account_iam_member.app_workload_identity.member == "serviceAccount:flashsale-test.svc.id.goog[flashsale/flashsale]"
    error_message = "The app's Kubernetes service account must be bound to its Google service account."
  }
}

run "single_primary_redis_is_the_default" {
  command = plan

  assert {
    condition     = length(google_redis_instance.this) == 1 && length(google_redis_cluster.this) == 0
    error_message = "Without redis_topology the single-primary Memorystore instance must be created, and no cluster."
  }

  assert {
    condition     = output.redis_node_port_range == null && output.redis_topology == "single-primary"
    error_message = "The single-primary instance needs no node port range."
  }

  assert {
    condition     = nonsensitive(startswith(output.redis_url, "rediss://:"))
    error_message = "REDIS_URL must use TLS and carry the AUTH string."
  }
}

run "redis_cluster_is_sharded_replicated_encrypted_and_private" {
  command = plan

  variables {
    redis_topology            = "cluster"
    redis_cluster_shard_count = 6
  }

  assert {
    condition     = length(google_redis_instance.this) == 0 && length(google_redis_cluster.this) == 1
    error_message = "redis_topology = cluster must create Memorystore for Redis Cluster instead of the instance."
  }

  assert {
    condition     = google_redis_cluster.this[0].shard_count == 6 && google_redis_cluster.this[0].replica_count == 1
    error_message = "The cluster must have redis_cluster_shard_count shards with a replica each."
  }

  assert {
    condition     = google_redis_cluster.this[0].transit_encryption_mode == "TRANSIT_ENCRYPTION_MODE_SERVER_AUTHENTICATION"
    error_message = "The cluster must encrypt in transit."
  }

  assert {
    condition     = google_redis_cluster.this[0].zone_distribution_config[0].mode == "MULTI_ZONE"
    error_message = "The cluster's nodes must spread over the region's zones."
  }

  assert {
    condition     = google_network_connectivity_service_connection_policy.redis[0].service_class == "gcp-memorystore-redis"
    error_message = "A service connection policy must let Memorystore create its Private Service Connect endpoints."
  }

  assert {
    condition     = google_compute_subnetwork.redis_psc[0].ip_cidr_range == "10.10.16.0/26"
    error_message = "The endpoints must land in their own subnet."
  }

  assert {
    condition     = output.redis_node_port_range.from == 11000 && output.redis_node_port_range.to == 13047
    error_message = "The app stage must learn the nodes' port range."
  }

  assert {
    condition     = contains(output.data_store_cidrs, "10.10.16.0/26")
    error_message = "The endpoint subnet must be among the data-store ranges."
  }
}

run "unknown_redis_topology_is_refused" {
  command = plan

  variables {
    redis_topology = "sentinel"
  }

  expect_failures = [var.redis_topology]
}

run "redis_cluster_without_replicas_is_refused" {
  command = plan

  variables {
    redis_topology              = "cluster"
    redis_cluster_replica_count = 0
  }

  expect_failures = [var.redis_cluster_replica_count]
}

run "overlapping_endpoint_subnet_is_refused" {
  command = plan

  variables {
    redis_topology                = "cluster"
    redis_cluster_psc_subnet_cidr = "10.10.4.0/26"
  }

  expect_failures = [var.redis_cluster_psc_subnet_cidr]
}

run "spike_example_scales_further" {
  command = plan

  variables {
    node_min_count = 6
    node_max_count = 60
  }

  assert {
    condition     = google_container_node_pool.app.autoscaling[0].total_max_node_count == 60
    error_message = "node_max_count must reach the node pool."
  }
}

run "world_open_control_plane_is_refused" {
  command = plan

  variables {
    master_authorized_networks = [{
      cidr_block   = "0.0.0.0/0"
      display_name = "everyone"
    }]
  }

  expect_failures = [var.master_authorized_networks]
}

run "node_max_below_min_is_refused" {
  command = plan

  variables {
    node_min_count = 10
    node_max_count = 5
  }

  expect_failures = [var.node_max_count]
}
