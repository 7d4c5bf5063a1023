# terraform test (offline, mocked providers): run from terraform/eks with
#   terraform init -backend=false && terraform test
# init downloads terraform-aws-modules/vpc and eks (the registry must be reachable once).

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

mock_provider "helm" {}
mock_provider "kubernetes" {}
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
      aws_elasticache_replication_group.this.multi_az_enabled &&
      aws_elasticache_replication_group.this.automatic_failover_enabled &&
      aws_elasticache_replication_group.this.num_cache_clusters == 2
    )
    error_message = "Redis must be Multi-AZ with automatic failover and a replica."
  }

  assert {
    condition = (
      aws_elasticache_replication_group.this.at_rest_encryption_enabled &&
      aws_elasticache_replication_group.this.transit_encryption_enabled
    )
    error_message = "Redis must be encrypted at rest and in transit."
  }

  assert {
    condition     = length([for r in aws_security_group.redis.ingress : r if try(length(r.cidr_blocks), 0) > 0]) == 0
    error_message = "Redis must be reachable from the node security group only, never from a CIDR block."
  }
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
