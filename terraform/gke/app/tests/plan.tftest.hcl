# terraform test (mocked providers): run from terraform/gke/app with
#   terraform init -backend=false && terraform test
# (init downloads the providers once; the cluster stage's state is overridden below)

mock_provider "google" {
  mock_data "google_client_config" {
    defaults = {
      access_token = "mock-access-token"
    }
  }

  mock_data "google_container_cluster" {
    defaults = {
      endpoint = "203.0.113.10"
      master_auth = [{
        cluster_ca_certificate = "bW9jay1jYQ==" # base64("mock-ca")
      }]
      private_cluster_config = [{
        private_endpoint = "172.16.0.2"
      }]
    }
  }
}

mock_provider "helm" {}
mock_provider "kubernetes" {}
mock_provider "random" {}

override_data {
  target = data.terraform_remote_state.cluster
  values = {
    outputs = {
      project_id                    = "flashsale-test"
      region                        = "us-central1"
      cluster_name                  = "flashsale"
      cluster_private_endpoint_only = false
      app_namespace                 = "flashsale"
      app_service_account           = "flashsale"
      app_google_service_account    = "flashsale-app@flashsale-test.iam.gserviceaccount.com"
      redis_topology                = "single-primary"
      redis_port                    = 6378
      redis_node_port_range         = null
      redis_url                     = "rediss://:test-only@10.100.0.3:6378/0"
      database_url                  = "postgresql://flashsale:test-only@10.100.1.5:5432/flashsale?sslmode=require"
      data_store_cidrs              = ["10.100.0.0/20"]
    }
  }
}

run "installs_flashsale_on_the_named_cluster" {
  command = plan

  assert {
    condition     = local.kubernetes_host == "https://203.0.113.10"
    error_message = "The providers must dial the running cluster's public endpoint."
  }

  assert {
    condition     = output.namespace == "flashsale" && output.release_name == "flashsale"
    error_message = "FlashSale must be installed in the cluster stage's namespace."
  }

  assert {
    condition     = output.redis_cluster == false
    error_message = "A single-primary Memorystore must not switch FlashSale to Redis Cluster."
  }
}

run "private_control_plane_is_dialled_privately" {
  command = plan

  override_data {
    target = data.terraform_remote_state.cluster
    values = {
      outputs = {
        project_id                    = "flashsale-test"
        region                        = "us-central1"
        cluster_name                  = "flashsale"
        cluster_private_endpoint_only = true
        app_namespace                 = "flashsale"
        app_service_account           = "flashsale"
        app_google_service_account    = "flashsale-app@flashsale-test.iam.gserviceaccount.com"
        redis_topology                = "single-primary"
        redis_port                    = 6378
        redis_node_port_range         = null
        redis_url                     = "rediss://:test-only@10.100.0.3:6378/0"
        database_url                  = "postgresql://flashsale:test-only@10.100.1.5:5432/flashsale?sslmode=require"
        data_store_cidrs              = ["10.100.0.0/20"]
      }
    }
  }

  assert {
    condition     = local.kubernetes_host == "https://172.16.0.2"
    error_message = "With a private-only control plane the providers must dial its private endpoint."
  }
}

run "redis_cluster_switches_flashsale_to_cluster_mode" {
  command = plan

  override_data {
    target = data.terraform_remote_state.cluster
    values = {
      outputs = {
        project_id                    = "flashsale-test"
        region                        = "us-central1"
        cluster_name                  = "flashsale"
        cluster_private_endpoint_only = false
        app_namespace                 = "flashsale"
        app_service_account           = "flashsale"
        app_google_service_account    = "flashsale-app@flashsale-test.iam.gserviceaccount.com"
        redis_topology                = "cluster"
        redis_port                    = 6379
        redis_node_port_range         = { from = 11000, to = 13047 }
        redis_url                     = "rediss://10.10.16.3:6379/0"
        database_url                  = "postgresql://flashsale:test-only@10.100.1.5:5432/flashsale?sslmode=require"
        data_store_cidrs              = ["10.100.0.0/20", "10.10.16.0/26"]
      }
    }
  }

  assert {
    condition     = output.redis_cluster
    error_message = "Memorystore for Redis Cluster must switch FlashSale to Redis Cluster."
  }
}

run "unknown_state_backend_is_refused" {
  command = plan

  variables {
    cluster_state_backend = "consul"
  }

  expect_failures = [var.cluster_state_backend]
}
