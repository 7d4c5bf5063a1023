# ---------------------------------------------------------------------------------------------
# Project and naming
# ---------------------------------------------------------------------------------------------

variable "project_id" {
  description = "Google Cloud project that receives the network, cluster, Memorystore and Cloud SQL."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project id (6-30 lowercase letters, digits, '-')."
  }
}

variable "region" {
  description = "Region of the regional cluster, Memorystore and Cloud SQL (for example us-central1, asia-northeast3)."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1."
  }
}

variable "name" {
  description = "Prefix of every resource name (network, cluster, instances, service accounts)."
  type        = string
  default     = "flashsale"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name))
    error_message = "name must be 3-20 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes labels."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------

variable "subnet_cidr" {
  description = "Primary range of the cluster subnet (nodes and internal load balancers)."
  type        = string
  default     = "10.10.0.0/20"

  validation {
    condition     = can(cidrhost(var.subnet_cidr, 0))
    error_message = "subnet_cidr must be a CIDR block."
  }
}

variable "pods_cidr" {
  description = "Secondary range for pod IPs (VPC-native cluster); a /14 holds about 1000 nodes of 110 pods."
  type        = string
  default     = "10.20.0.0/14"

  validation {
    condition     = can(cidrhost(var.pods_cidr, 0))
    error_message = "pods_cidr must be a CIDR block."
  }
}

variable "services_cidr" {
  description = "Secondary range for Service cluster IPs."
  type        = string
  default     = "10.24.0.0/20"

  validation {
    condition     = can(cidrhost(var.services_cidr, 0))
    error_message = "services_cidr must be a CIDR block."
  }
}

variable "master_ipv4_cidr_block" {
  description = "/28 range of the private control plane (must not overlap the other ranges)."
  type        = string
  default     = "172.16.0.0/28"

  validation {
    condition     = can(cidrhost(var.master_ipv4_cidr_block, 0)) && endswith(var.master_ipv4_cidr_block, "/28")
    error_message = "master_ipv4_cidr_block must be a /28 CIDR block."
  }
}

variable "private_service_access_prefix_length" {
  description = "Prefix length of the range reserved for private service access (Memorystore and Cloud SQL private IPs)."
  type        = number
  default     = 20

  validation {
    condition     = var.private_service_access_prefix_length >= 16 && var.private_service_access_prefix_length <= 24
    error_message = "private_service_access_prefix_length must be between 16 and 24."
  }
}

# ---------------------------------------------------------------------------------------------
# Cluster
# ---------------------------------------------------------------------------------------------

variable "master_authorized_networks" {
  description = "CIDR blocks allowed to reach the control plane (your office, VPN or CI runners). The world is never allowed."
  type = list(object({
    cidr_block   = string
    display_name = string
  }))

  validation {
    condition = length(var.master_authorized_networks) > 0 && alltrue([
      for n in var.master_authorized_networks :
      can(cidrhost(n.cidr_block, 0)) && !endswith(n.cidr_block, "/0")
    ])
    error_message = "master_authorized_networks needs at least one CIDR block, none of them /0."
  }
}

variable "enable_private_endpoint" {
  description = "Serve the control plane on its private address only (Terraform must then run inside the VPC)."
  type        = bool
  default     = false
}

variable "release_channel" {
  description = "GKE release channel that drives control-plane and node upgrades."
  type        = string
  default     = "REGULAR"

  validation {
    condition     = contains(["RAPID", "REGULAR", "STABLE"], var.release_channel)
    error_message = "release_channel must be RAPID, REGULAR or STABLE."
  }
}

variable "rbac_security_group" {
  description = "Google Group for Kubernetes RBAC (gke-security-groups@YOUR-DOMAIN); empty: Google Groups for RBAC off."
  type        = string
  default     = ""

  validation {
    condition     = var.rbac_security_group == "" || can(regex("^gke-security-groups@", var.rbac_security_group))
    error_message = "rbac_security_group must be empty or gke-security-groups@<your domain>."
  }
}

variable "cluster_deletion_protection" {
  description = "Refuse to destroy the cluster (set false, apply, then destroy to tear down)."
  type        = bool
  default     = true
}

variable "node_machine_type" {
  description = "Machine type of the application node pool."
  type        = string
  default     = "e2-standard-4"
}

variable "node_min_count" {
  description = "Fewest nodes of the pool across all zones (kept between sales)."
  type        = number
  default     = 3

  validation {
    condition     = var.node_min_count >= 1
    error_message = "node_min_count must be at least 1."
  }
}

variable "node_max_count" {
  description = "Most nodes of the pool across all zones (the ceiling of a spike)."
  type        = number
  default     = 12

  validation {
    condition     = var.node_max_count >= var.node_min_count && var.node_max_count <= 1000
    error_message = "node_max_count must be at least node_min_count and at most 1000."
  }
}

variable "node_disk_size_gb" {
  description = "Boot disk size of each node, in GB."
  type        = number
  default     = 100

  validation {
    condition     = var.node_disk_size_gb >= 20
    error_message = "node_disk_size_gb must be at least 20."
  }
}

variable "node_spot" {
  description = "Run the pool on Spot VMs (cheap, but may be reclaimed in the middle of a sale)."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------
# Memorystore: a single-primary instance, or Memorystore for Redis Cluster
# ---------------------------------------------------------------------------------------------

variable "redis_topology" {
  description = "single-primary: Memorystore for Redis STANDARD_HA (a primary and a replica, AUTH and TLS); cluster: Memorystore for Redis Cluster (sharded, TLS, Private Service Connect), and FlashSale is told to use Redis Cluster."
  type        = string
  default     = "single-primary"

  validation {
    condition     = contains(["single-primary", "cluster"], var.redis_topology)
    error_message = "redis_topology must be single-primary or cluster."
  }
}

variable "redis_memory_size_gb" {
  description = "Capacity of the single-primary Memorystore instance in GB (waiting rooms, stock, holds and order streams)."
  type        = number
  default     = 5

  validation {
    condition     = var.redis_memory_size_gb >= 1 && var.redis_memory_size_gb <= 300
    error_message = "redis_memory_size_gb must be between 1 and 300."
  }
}

variable "redis_version" {
  description = "Redis version of the single-primary Memorystore instance."
  type        = string
  default     = "REDIS_7_2"

  validation {
    condition     = can(regex("^REDIS_[0-9]+(_[0-9]+)?$", var.redis_version))
    error_message = "redis_version must look like REDIS_7_2."
  }
}

variable "redis_cluster_shard_count" {
  description = "Shards of Memorystore for Redis Cluster (each a primary node, holding part of the key space)."
  type        = number
  default     = 3

  validation {
    condition     = var.redis_cluster_shard_count >= 1 && var.redis_cluster_shard_count <= 250 && floor(var.redis_cluster_shard_count) == var.redis_cluster_shard_count
    error_message = "redis_cluster_shard_count must be a whole number between 1 and 250."
  }
}

variable "redis_cluster_replica_count" {
  description = "Replicas of each shard of Memorystore for Redis Cluster, in other zones (1 or 2: a shard without a replica has no failover)."
  type        = number
  default     = 1

  validation {
    condition     = contains([1, 2], var.redis_cluster_replica_count)
    error_message = "redis_cluster_replica_count must be 1 or 2."
  }
}

variable "redis_cluster_node_type" {
  description = "Node type of Memorystore for Redis Cluster."
  type        = string
  default     = "REDIS_HIGHMEM_MEDIUM"

  validation {
    condition     = contains(["REDIS_SHARED_CORE_NANO", "REDIS_STANDARD_SMALL", "REDIS_HIGHMEM_MEDIUM", "REDIS_HIGHMEM_XLARGE"], var.redis_cluster_node_type)
    error_message = "redis_cluster_node_type must be REDIS_SHARED_CORE_NANO, REDIS_STANDARD_SMALL, REDIS_HIGHMEM_MEDIUM or REDIS_HIGHMEM_XLARGE."
  }
}

variable "redis_cluster_psc_subnet_cidr" {
  description = "Range of the subnet that receives the Private Service Connect endpoints of Memorystore for Redis Cluster (must not overlap the other ranges)."
  type        = string
  default     = "10.10.16.0/26"

  validation {
    condition     = can(cidrhost(var.redis_cluster_psc_subnet_cidr, 0)) && tonumber(split("/", var.redis_cluster_psc_subnet_cidr)[1]) <= 29
    error_message = "redis_cluster_psc_subnet_cidr must be a CIDR block of /29 or larger."
  }

  # Two blocks overlap when the first address of either lies inside the other.
  validation {
    condition = !can(cidrhost(var.redis_cluster_psc_subnet_cidr, 0)) || alltrue([
      for other in [var.subnet_cidr, var.pods_cidr, var.services_cidr] : !(
        cidrhost("${cidrhost(var.redis_cluster_psc_subnet_cidr, 0)}/${split("/", other)[1]}", 0) == cidrhost(other, 0) ||
        cidrhost("${cidrhost(other, 0)}/${split("/", var.redis_cluster_psc_subnet_cidr)[1]}", 0) == cidrhost(var.redis_cluster_psc_subnet_cidr, 0)
      )
    ])
    error_message = "redis_cluster_psc_subnet_cidr must not overlap subnet_cidr, pods_cidr or services_cidr."
  }
}

variable "redis_cluster_deletion_protection" {
  description = "Refuse to delete Memorystore for Redis Cluster (set false, apply, then destroy to tear down)."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------
# Cloud SQL for PostgreSQL
# ---------------------------------------------------------------------------------------------

variable "db_version" {
  description = "Cloud SQL database version."
  type        = string
  default     = "POSTGRES_18"

  validation {
    condition     = can(regex("^POSTGRES_[0-9]+$", var.db_version))
    error_message = "db_version must look like POSTGRES_18."
  }
}

variable "db_tier" {
  description = "Cloud SQL machine tier (db-custom-<vCPUs>-<MB>)."
  type        = string
  default     = "db-custom-2-7680"

  validation {
    condition     = can(regex("^db-", var.db_tier))
    error_message = "db_tier must be a Cloud SQL tier such as db-custom-2-7680."
  }
}

variable "db_disk_size_gb" {
  description = "Initial SSD size of Cloud SQL in GB (it grows by itself)."
  type        = number
  default     = 50

  validation {
    condition     = var.db_disk_size_gb >= 10
    error_message = "db_disk_size_gb must be at least 10."
  }
}

variable "db_backup_retained_count" {
  description = "Automated daily backups Cloud SQL keeps."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retained_count >= 7 && var.db_backup_retained_count <= 365
    error_message = "db_backup_retained_count must be between 7 and 365."
  }
}

variable "db_deletion_protection" {
  description = "Refuse to destroy the Cloud SQL instance (both in Terraform and in the Cloud SQL API)."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------
# The application's identity (the app stage installs FlashSale under these names)
# ---------------------------------------------------------------------------------------------

variable "app_namespace" {
  description = "Kubernetes namespace of FlashSale."
  type        = string
  default     = "flashsale"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.app_namespace))
    error_message = "app_namespace must be a DNS-1123 label."
  }
}

variable "app_service_account" {
  description = "Kubernetes service account of the FlashSale pods, bound to a Google service account by Workload Identity."
  type        = string
  default     = "flashsale"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.app_service_account))
    error_message = "app_service_account must be a DNS-1123 label."
  }
}
