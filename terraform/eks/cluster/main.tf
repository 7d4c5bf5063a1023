locals {
  tags = merge(var.tags, {
    App       = "flashsale"
    ManagedBy = "terraform"
  })

  # The named zones, in the order given, once the lookup below has proved each of them exists.
  azs      = [for z in var.availability_zones : z if contains(data.aws_availability_zones.available.names, z)]
  az_count = length(var.availability_zones)

  # ElastiCache with cluster mode enabled (redis_topology = "cluster") instead of a
  # single-primary replication group.
  redis_cluster = var.redis_topology == "cluster"
}

# The zones are named, not "the first N the region lists", so a zone AWS adds later never moves
# subnets around. This lookup only proves that every named zone exists and is available.
data "aws_availability_zones" "available" {
  state = "available"

  filter {
    name   = "zone-name"
    values = var.availability_zones
  }

  lifecycle {
    postcondition {
      condition     = length(self.names) == length(var.availability_zones)
      error_message = "Every zone in availability_zones must exist in the region and be available."
    }
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}
