# ---------------------------------------------------------------------------------------------
# Region and naming
# ---------------------------------------------------------------------------------------------

variable "region" {
  description = "AWS region of the VPC, cluster, ElastiCache and RDS (for example us-east-1, ap-northeast-2)."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region such as us-east-1."
  }
}

variable "name" {
  description = "Prefix of every resource name (VPC, cluster, replication group, database)."
  type        = string
  default     = "flashsale"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name))
    error_message = "name must be 3-20 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every resource (through the provider's default_tags)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR block of the VPC; split into public, private (nodes), database and cache subnets in each zone."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 18
    error_message = "vpc_cidr must be a CIDR block of /18 or larger."
  }
}

variable "availability_zones" {
  description = "Availability zones of the region to use (nodes, Multi-AZ Redis and RDS spread over them)."
  type        = list(string)
  default     = ["us-east-1a", "us-east-1b", "us-east-1c"]

  validation {
    condition = (
      length(var.availability_zones) >= 2 && length(var.availability_zones) <= 4 &&
      length(distinct(var.availability_zones)) == length(var.availability_zones) &&
      alltrue([for z in var.availability_zones : startswith(z, var.region)])
    )
    error_message = "availability_zones must list 2 to 4 distinct zones of the chosen region (Multi-AZ needs 2)."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for the whole VPC (cheaper) instead of one per zone (survives a zone outage)."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------
# Cluster
# ---------------------------------------------------------------------------------------------

variable "kubernetes_version" {
  description = "EKS Kubernetes version (<major>.<minor>)."
  type        = string
  default     = "1.33"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must look like 1.33."
  }
}

variable "cluster_endpoint_public_access" {
  description = "Serve the Kubernetes API on a public endpoint (restricted to cluster_endpoint_public_access_cidrs); false: private endpoint only, so Terraform must run inside the VPC."
  type        = bool
  default     = true
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "CIDR blocks allowed to reach the public API endpoint (your office, VPN or CI runners). The world is never allowed."
  type        = list(string)
  default     = []

  validation {
    condition = alltrue([
      for c in var.cluster_endpoint_public_access_cidrs : can(cidrhost(c, 0)) && !endswith(c, "/0")
    ])
    error_message = "cluster_endpoint_public_access_cidrs must hold CIDR blocks, none of them /0."
  }

  validation {
    condition     = !var.cluster_endpoint_public_access || length(var.cluster_endpoint_public_access_cidrs) > 0
    error_message = "With cluster_endpoint_public_access, list at least one CIDR block allowed to reach it."
  }
}

variable "node_instance_types" {
  description = "Instance types of the managed node group (several let the group find capacity during a spike)."
  type        = list(string)
  default     = ["m6i.xlarge", "m5.xlarge"]

  validation {
    condition     = length(var.node_instance_types) > 0
    error_message = "node_instance_types needs at least one instance type."
  }
}

variable "node_capacity_type" {
  description = "ON_DEMAND, or SPOT (cheap, but nodes may be reclaimed in the middle of a sale)."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.node_capacity_type)
    error_message = "node_capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "node_min_count" {
  description = "Fewest nodes of the managed node group (kept between sales)."
  type        = number
  default     = 3

  validation {
    condition     = var.node_min_count >= 1
    error_message = "node_min_count must be at least 1."
  }
}

variable "node_max_count" {
  description = "Most nodes of the managed node group (the ceiling of a spike, for the cluster autoscaler or Karpenter)."
  type        = number
  default     = 12

  validation {
    condition     = var.node_max_count >= var.node_min_count && var.node_max_count <= 450
    error_message = "node_max_count must be at least node_min_count and at most 450."
  }
}

variable "node_disk_size_gb" {
  description = "Root volume size of each node, in GB (encrypted gp3)."
  type        = number
  default     = 100

  validation {
    condition     = var.node_disk_size_gb >= 20
    error_message = "node_disk_size_gb must be at least 20."
  }
}

# ---------------------------------------------------------------------------------------------
# ElastiCache for Redis: a single-primary replication group, or cluster mode enabled
# ---------------------------------------------------------------------------------------------

variable "redis_topology" {
  description = "single-primary: one primary and redis_replicas replicas (cluster mode disabled); cluster: cluster mode enabled, redis_shards shards of one primary and redis_replicas replicas each, and FlashSale is told to use Redis Cluster."
  type        = string
  default     = "single-primary"

  validation {
    condition     = contains(["single-primary", "cluster"], var.redis_topology)
    error_message = "redis_topology must be single-primary or cluster."
  }
}

variable "redis_shards" {
  description = "Shards (node groups) of the replication group in cluster mode: each holds part of the key space on a primary and its replicas."
  type        = number
  default     = 3

  validation {
    condition     = var.redis_shards >= 1 && var.redis_shards <= 500 && floor(var.redis_shards) == var.redis_shards
    error_message = "redis_shards must be a whole number between 1 and 500."
  }

  # ElastiCache allows at most 500 nodes in one cluster-mode replication group.
  validation {
    condition     = var.redis_topology != "cluster" || var.redis_shards * (1 + var.redis_replicas) <= 500
    error_message = "redis_shards * (1 + redis_replicas) must be at most 500 nodes."
  }
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.r7g.large"

  validation {
    condition     = can(regex("^cache\\.", var.redis_node_type))
    error_message = "redis_node_type must be an ElastiCache node type such as cache.r7g.large."
  }
}

variable "redis_engine_version" {
  description = "Redis engine version of the replication group (its major version names the parameter group family)."
  type        = string
  default     = "7.1"

  validation {
    condition     = can(regex("^[67]\\.[0-9]+$", var.redis_engine_version))
    error_message = "redis_engine_version must be 6.x or 7.x (AUTH with TLS needs 6 or later)."
  }
}

variable "redis_replicas" {
  description = "Replicas of the primary (single-primary) or of each shard's primary (cluster), in other zones (at least 1 for automatic failover)."
  type        = number
  default     = 1

  validation {
    condition     = var.redis_replicas >= 1 && var.redis_replicas <= 5
    error_message = "redis_replicas must be between 1 and 5."
  }
}

variable "redis_snapshot_retention_days" {
  description = "Days of daily Redis snapshots kept (PostgreSQL remains the system of record)."
  type        = number
  default     = 3

  validation {
    condition     = var.redis_snapshot_retention_days >= 1 && var.redis_snapshot_retention_days <= 35
    error_message = "redis_snapshot_retention_days must be between 1 and 35."
  }
}

# ---------------------------------------------------------------------------------------------
# RDS for PostgreSQL
# ---------------------------------------------------------------------------------------------

variable "db_engine_version" {
  description = "RDS PostgreSQL major version (minor versions are upgraded automatically)."
  type        = string
  default     = "17"

  validation {
    condition     = can(regex("^1[4-9](\\.[0-9]+)?$", var.db_engine_version))
    error_message = "db_engine_version must be PostgreSQL 14 or later (for example 17)."
  }
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.m7g.large"

  validation {
    condition     = can(regex("^db\\.", var.db_instance_class))
    error_message = "db_instance_class must be an RDS class such as db.m7g.large."
  }
}

variable "db_allocated_storage_gb" {
  description = "Initial gp3 storage of RDS in GB."
  type        = number
  default     = 50

  validation {
    condition     = var.db_allocated_storage_gb >= 20
    error_message = "db_allocated_storage_gb must be at least 20."
  }
}

variable "db_max_allocated_storage_gb" {
  description = "Storage autoscaling ceiling in GB."
  type        = number
  default     = 500

  validation {
    condition     = var.db_max_allocated_storage_gb >= var.db_allocated_storage_gb
    error_message = "db_max_allocated_storage_gb must be at least db_allocated_storage_gb."
  }
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (and point-in-time recovery) RDS keeps."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 7 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be between 7 and 35."
  }
}

variable "db_deletion_protection" {
  description = "Refuse to delete the RDS instance (set false, apply, then destroy to tear down)."
  type        = bool
  default     = true
}

variable "db_performance_insights" {
  description = "Turn on Performance Insights (7 days free, encrypted with the stack's KMS key)."
  type        = bool
  default     = true
}
