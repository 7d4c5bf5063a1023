# terraform test (mocked providers): run from terraform/eks/app with
#   terraform init -backend=false && terraform test
# (init downloads the providers once; the cluster stage's state is overridden below)

mock_provider "aws" {
  mock_data "aws_eks_cluster" {
    defaults = {
      endpoint = "https://ABCDEF.gr7.us-east-1.eks.amazonaws.com"
      certificate_authority = [{
        data = "bW9jay1jYQ==" # base64("mock-ca")
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
      region             = "us-east-1"
      cluster_name       = "flashsale"
      kubernetes_version = "1.33"
      cluster_autoscaler_service_account = {
        namespace = "kube-system"
        name      = "cluster-autoscaler"
      }
      redis_topology   = "single-primary"
      redis_port       = 6379
      redis_url        = "rediss://:test-only@master.flashsale-redis.abc123.use1.cache.amazonaws.com:6379/0"
      database_url     = "postgresql://flashsale:test-only@flashsale-pg.abc123.us-east-1.rds.amazonaws.com:5432/flashsale?sslmode=require"
      data_store_cidrs = ["10.40.72.0/24", "10.40.68.0/24"]
    }
  }
}

run "installs_flashsale_and_the_autoscaler_on_the_named_cluster" {
  command = plan

  assert {
    condition     = local.kubernetes_host == "https://ABCDEF.gr7.us-east-1.eks.amazonaws.com"
    error_message = "The providers must dial the running cluster's endpoint."
  }

  assert {
    condition     = contains(local.kubernetes_exec.args, "flashsale") && local.kubernetes_exec.command == "aws"
    error_message = "The providers must get their token for the named cluster from the AWS CLI."
  }

  assert {
    condition     = helm_release.cluster_autoscaler.namespace == "kube-system" && yamldecode(helm_release.cluster_autoscaler.values[0]).rbac.serviceAccount.name == "cluster-autoscaler"
    error_message = "The Cluster Autoscaler must run as the service account its Pod Identity association names."
  }

  assert {
    condition     = yamldecode(helm_release.cluster_autoscaler.values[0]).image.tag == "v1.33.0"
    error_message = "The autoscaler's image must follow the cluster's Kubernetes version."
  }

  assert {
    condition     = output.redis_cluster == false
    error_message = "A single-primary group must not switch FlashSale to Redis Cluster."
  }
}

run "redis_cluster_switches_flashsale_to_cluster_mode" {
  command = plan

  override_data {
    target = data.terraform_remote_state.cluster
    values = {
      outputs = {
        region             = "us-east-1"
        cluster_name       = "flashsale"
        kubernetes_version = "1.33"
        cluster_autoscaler_service_account = {
          namespace = "kube-system"
          name      = "cluster-autoscaler"
        }
        redis_topology   = "cluster"
        redis_port       = 6379
        redis_url        = "rediss://:test-only@clustercfg.flashsale-redis-cluster.abc123.use1.cache.amazonaws.com:6379/0"
        database_url     = "postgresql://flashsale:test-only@flashsale-pg.abc123.us-east-1.rds.amazonaws.com:5432/flashsale?sslmode=require"
        data_store_cidrs = ["10.40.72.0/24", "10.40.68.0/24"]
      }
    }
  }

  assert {
    condition     = output.redis_cluster
    error_message = "Cluster mode must switch FlashSale to Redis Cluster."
  }
}

run "incomplete_s3_state_config_is_refused" {
  command = plan

  variables {
    cluster_state_backend = "s3"
    cluster_state_config  = { bucket = "my-tf-state" }
  }

  expect_failures = [var.cluster_state_config]
}
