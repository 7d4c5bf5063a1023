# terraform test (mocked providers): run from terraform/eks/cluster with
#   terraform init -backend=false && terraform test
# init downloads the providers and terraform-aws-modules/vpc and eks once (the registry must be
# reachable); the plans below run against mocks, no AWS account.

mock_provider "aws" {
  mock_data "aws_availability_zones" {
    defaults = {
      names = ["us-east-1a", "us-east-1b", "us-east-1c"]
    }
  }

  mock_data "aws_caller_identity" {
    defaults = {
      account_id = "123456789012"
      arn        = "arn:aws:iam::123456789012:user/terraform"
    }
  }

  mock_data "aws_partition" {
    defaults = {
      partition  = "aws"
      dns_suffix = "amazonaws.com"
    }
  }

  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
}

mock_provider "random" {}
mock_provider "cloudinit" {}
mock_provider "time" {}

mock_provider "tls" {
  mock_data "tls_certificate" {
    defaults = {
      certificates = [{
        sha1_fingerprint = "9e99a48a9960b14926bb7f3b02e22da2b0ab7280"
      }]
    }
  }
}

variables {
  cluster_endpoint_public_access_cidrs = ["203.0.113.0/24"]
}

run "redis_is_multi_az_encrypted_and_authenticated" {
  command = plan

  assert {
    condition = (
      aws_elasticache_replication_group.this[0].multi_az_enabled &&
      aws_elasticache_replication_group.this[0].automatic_failover_enabled &&
      aws_elasticache_replication_group.this[0].num_cache_clusters == 2
    )
    error_message = "Redis must be Multi-AZ with automatic failover and a replica."
  }

  assert {
    condition = (
      aws_elasticache_replication_group.this[0].at_rest_encryption_enabled &&
      aws_elasticache_replication_group.this[0].transit_encryption_enabled
    )
    error_message = "Redis must be encrypted at rest and in transit."
  }

  assert {
    condition     = length([for r in aws_security_group.redis.ingress : r if try(length(r.cidr_blocks), 0) > 0]) == 0
    error_message = "Redis must be reachable from the node security group only, never from a CIDR block."
  }
}

run "single_primary_redis_is_the_default" {
  command = plan

  assert {
    condition     = length(aws_elasticache_replication_group.this) == 1 && length(aws_elasticache_replication_group.cluster) == 0
    error_message = "Without redis_topology the single-primary replication group must be created, and no cluster."
  }

  assert {
    condition     = !contains([for p in aws_elasticache_parameter_group.redis.parameter : p.name], "cluster-enabled")
    error_message = "The single-primary group's parameters must not enable cluster mode."
  }
}

run "redis_cluster_is_sharded_replicated_encrypted_and_authenticated" {
  command = plan

  variables {
    redis_topology = "cluster"
    redis_shards   = 4
    redis_replicas = 2
  }

  assert {
    condition     = length(aws_elasticache_replication_group.this) == 0 && length(aws_elasticache_replication_group.cluster) == 1
    error_message = "redis_topology = cluster must create the cluster-mode group instead of the single-primary one."
  }

  assert {
    condition = (
      aws_elasticache_replication_group.cluster[0].cluster_mode == "enabled" &&
      aws_elasticache_replication_group.cluster[0].num_node_groups == 4 &&
      aws_elasticache_replication_group.cluster[0].replicas_per_node_group == 2
    )
    error_message = "Cluster mode must shard over redis_shards node groups of redis_replicas replicas."
  }

  assert {
    condition = (
      aws_elasticache_replication_group.cluster[0].transit_encryption_enabled &&
      aws_elasticache_replication_group.cluster[0].at_rest_encryption_enabled &&
      aws_elasticache_replication_group.cluster[0].automatic_failover_enabled &&
      aws_elasticache_replication_group.cluster[0].multi_az_enabled
    )
    error_message = "The cluster must be encrypted at rest and in transit, Multi-AZ with automatic failover."
  }

  assert {
    condition     = one([for p in aws_elasticache_parameter_group.redis.parameter : p.value if p.name == "cluster-enabled"]) == "yes"
    error_message = "Cluster mode needs cluster-enabled = yes in its parameter group."
  }

  assert {
    condition     = output.redis_topology == "cluster"
    error_message = "The app stage must learn that Redis is a cluster."
  }
}

run "unknown_redis_topology_is_refused" {
  command = plan

  variables {
    redis_topology = "sentinel"
  }

  expect_failures = [var.redis_topology]
}

run "too_many_redis_nodes_are_refused" {
  command = plan

  variables {
    redis_topology = "cluster"
    redis_shards   = 200
    redis_replicas = 3
  }

  expect_failures = [var.redis_shards]
}

run "database_is_multi_az_encrypted_private_and_backed_up" {
  command = plan

  assert {
    condition     = aws_db_instance.this.multi_az && aws_db_instance.this.storage_encrypted
    error_message = "RDS must be Multi-AZ and encrypted."
  }

  assert {
    condition     = aws_db_instance.this.publicly_accessible == false
    error_message = "RDS must not be publicly accessible."
  }

  assert {
    condition     = aws_db_instance.this.backup_retention_period >= 7 && aws_db_instance.this.deletion_protection
    error_message = "RDS must keep at least 7 days of backups and be protected from deletion."
  }

  assert {
    condition     = one([for p in aws_db_parameter_group.this.parameter : p.value if p.name == "rds.force_ssl"]) == "1"
    error_message = "RDS must force TLS."
  }
}

run "short_backup_retention_is_refused" {
  command = plan

  variables {
    db_backup_retention_days = 3
  }

  expect_failures = [var.db_backup_retention_days]
}

run "world_open_api_endpoint_is_refused" {
  command = plan

  variables {
    cluster_endpoint_public_access_cidrs = ["0.0.0.0/0"]
  }

  expect_failures = [var.cluster_endpoint_public_access_cidrs]
}

run "zones_of_another_region_are_refused" {
  command = plan

  variables {
    availability_zones = ["eu-west-1a", "eu-west-1b"]
  }

  expect_failures = [var.availability_zones]
}
