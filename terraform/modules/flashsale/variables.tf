# ---------------------------------------------------------------------------------------------
# Where and what to install
# ---------------------------------------------------------------------------------------------

variable "namespace" {
  description = "Kubernetes namespace of the FlashSale release (the API, admitter, persister and their secrets)."
  type        = string
  default     = "flashsale"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS-1123 label (lowercase letters, digits and '-', at most 63)."
  }
}

variable "create_namespace" {
  description = "Create the namespace (labelled for the restricted Pod Security Standard); false when it already exists."
  type        = bool
  default     = true
}

variable "release_name" {
  description = "Helm release name of the FlashSale chart; also the prefix of the secrets this module creates."
  type        = string
  default     = "flashsale"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$", var.release_name))
    error_message = "release_name must be lowercase letters, digits and '-', at most 40 characters."
  }
}

variable "chart_path" {
  description = "Path (or repository URL with chart_repository) of the FlashSale chart. null: the repository's charts/flashsale."
  type        = string
  default     = null
}

variable "chart_repository" {
  description = "Helm repository serving the FlashSale chart (for example an OCI registry); null to install chart_path from disk."
  type        = string
  default     = null
}

variable "chart_version" {
  description = "Version of the FlashSale chart when it comes from chart_repository; ignored for a chart on disk."
  type        = string
  default     = null
}

variable "image_repository" {
  description = "Container image repository of FlashSale (image.repository); null keeps the chart's default."
  type        = string
  default     = null
}

variable "image_tag" {
  description = "Container image tag of FlashSale (image.tag); null keeps the chart's default (its appVersion)."
  type        = string
  default     = null
}

variable "extra_values" {
  description = "Further values files (YAML strings) for the FlashSale chart, applied after the ones this module builds."
  type        = list(string)
  default     = []
}

variable "helm_timeout_seconds" {
  description = "How long Helm waits for each release to become ready."
  type        = number
  default     = 900

  validation {
    condition     = var.helm_timeout_seconds >= 60 && var.helm_timeout_seconds <= 3600
    error_message = "helm_timeout_seconds must be between 60 and 3600."
  }
}

variable "labels" {
  description = "Labels added to every Kubernetes object this module creates directly."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Connections and keys (sensitive: they go into Kubernetes Secrets, never into Helm values)
# ---------------------------------------------------------------------------------------------

variable "redis_url" {
  description = "REDIS_URL of the managed Redis, with its AUTH password (rediss:// for TLS)."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^rediss?://", var.redis_url))
    error_message = "redis_url must start with redis:// or rediss://."
  }
}

variable "database_url" {
  description = "DATABASE_URL of the managed PostgreSQL, with user and password (postgresql://..., sslmode=require)."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^postgres(ql)?://", var.database_url))
    error_message = "database_url must start with postgresql:// or postgres://."
  }
}

variable "redis_port" {
  description = "Port of the managed Redis (6378 for Memorystore with TLS), opened in the chart's NetworkPolicy."
  type        = number
  default     = 6379

  validation {
    condition     = var.redis_port >= 1 && var.redis_port <= 65535
    error_message = "redis_port must be a TCP port."
  }
}

variable "redis_cluster" {
  description = "redis_url leads to a Redis Cluster (ElastiCache cluster mode, Memorystore for Redis Cluster): sets the chart's externalRedis.cluster to \"true\" (FLASHSALE_REDIS_CLUSTER)."
  type        = bool
  default     = false
}

variable "redis_node_port_range" {
  description = "Further TCP ports the Redis Cluster's nodes listen on ({ from, to }, e.g. 11000-13047 on Memorystore for Redis Cluster), opened in the NetworkPolicy towards data_store_cidrs; null: redis_port only."
  type = object({
    from = number
    to   = number
  })
  default = null

  validation {
    condition = var.redis_node_port_range == null ? true : (
      var.redis_node_port_range.from >= 1 && var.redis_node_port_range.to <= 65535 &&
      var.redis_node_port_range.from <= var.redis_node_port_range.to
    )
    error_message = "redis_node_port_range needs 1 <= from <= to <= 65535."
  }

  validation {
    condition     = var.redis_node_port_range == null || var.redis_cluster
    error_message = "redis_node_port_range is for a Redis Cluster: set redis_cluster = true with it."
  }
}

variable "postgresql_port" {
  description = "Port of the managed PostgreSQL, opened in the chart's NetworkPolicy."
  type        = number
  default     = 5432

  validation {
    condition     = var.postgresql_port >= 1 && var.postgresql_port <= 65535
    error_message = "postgresql_port must be a TCP port."
  }
}

variable "data_store_cidrs" {
  description = "Address ranges of the managed Redis and PostgreSQL: the only places FlashSale pods may reach on those ports (empty: any address)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.data_store_cidrs : can(cidrhost(c, 0))])
    error_message = "data_store_cidrs must hold CIDR blocks."
  }
}

variable "token_key" {
  description = "FLASHSALE_TOKEN_KEY, the HMAC key signing queue tickets and admission tokens (at least 32 characters). null: a random 64-character key kept in the Terraform state."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.token_key == null ? true : length(var.token_key) >= 32
    error_message = "token_key must be at least 32 characters long."
  }
}

variable "token_key_previous" {
  description = "FLASHSALE_TOKEN_KEY_PREVIOUS, the key before the last rotation (tokens it signed stay valid). Empty: none."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.token_key_previous == "" || length(var.token_key_previous) >= 32
    error_message = "token_key_previous must be empty or at least 32 characters long."
  }
}

variable "admin_token" {
  description = "FLASHSALE_ADMIN_TOKEN, the bearer token of /admin/*. null: a random 48-character token kept in the Terraform state."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.admin_token == null ? true : length(var.admin_token) >= 24
    error_message = "admin_token must be at least 24 characters long."
  }
}

# ---------------------------------------------------------------------------------------------
# Workload identity, scaling and ingress of the application
# ---------------------------------------------------------------------------------------------

variable "service_account_name" {
  description = "Name of the Kubernetes service account the FlashSale pods run as (bound to a cloud identity by the root module)."
  type        = string
  default     = "flashsale"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.service_account_name))
    error_message = "service_account_name must be a DNS-1123 label."
  }
}

variable "service_account_annotations" {
  description = "Annotations of the FlashSale service account (iam.gke.io/gcp-service-account on GKE, eks.amazonaws.com/role-arn on EKS)."
  type        = map(string)
  default     = {}
}

variable "api_autoscaling" {
  description = "Horizontal autoscaling of the API pods (api.autoscaling.*): replicas kept warm before a sale and the ceiling of a spike."
  type = object({
    enabled                           = optional(bool, true)
    min_replicas                      = optional(number, 3)
    max_replicas                      = optional(number, 30)
    target_cpu_utilization_percentage = optional(number, 60)
  })
  default = {}

  validation {
    condition = (
      var.api_autoscaling.min_replicas >= 1 &&
      var.api_autoscaling.max_replicas >= var.api_autoscaling.min_replicas &&
      var.api_autoscaling.target_cpu_utilization_percentage > 0 &&
      var.api_autoscaling.target_cpu_utilization_percentage <= 100
    )
    error_message = "api_autoscaling needs 1 <= min_replicas <= max_replicas and 0 < target_cpu_utilization_percentage <= 100."
  }
}

variable "ingress_host" {
  description = "Host name shoppers use (ingress.hostname); empty: the Ingress answers on any host at the load balancer's address."
  type        = string
  default     = ""

  validation {
    condition     = var.ingress_host == "" || can(regex("^([a-z0-9]([-a-z0-9]*[a-z0-9])?\\.)+[a-z]{2,}$", var.ingress_host))
    error_message = "ingress_host must be empty or a lowercase DNS name."
  }
}

variable "ingress_tls_secret_name" {
  description = "TLS secret (in the FlashSale namespace, e.g. made by cert-manager) for ingress_host; empty: HTTP only."
  type        = string
  default     = ""
}

# ---------------------------------------------------------------------------------------------
# HAProxy Kubernetes Ingress Controller (haproxytech/kubernetes-ingress)
# ---------------------------------------------------------------------------------------------

variable "install_ingress_controller" {
  description = "Install the HAProxy Kubernetes Ingress Controller; false when the cluster already runs one with the 'haproxy' IngressClass."
  type        = bool
  default     = true
}

variable "ingress_controller_namespace" {
  description = "Namespace of the HAProxy Kubernetes Ingress Controller."
  type        = string
  default     = "haproxy-ingress"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.ingress_controller_namespace))
    error_message = "ingress_controller_namespace must be a DNS-1123 label."
  }
}

variable "ingress_controller_chart_version" {
  description = "Pinned version of the haproxytech kubernetes-ingress chart."
  type        = string
  default     = "1.45.0"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.ingress_controller_chart_version))
    error_message = "ingress_controller_chart_version must be an exact version (x.y.z), not a range."
  }
}

variable "ingress_controller_replicas" {
  description = "Minimum and maximum HAProxy replicas (the controller autoscales on CPU between them)."
  type = object({
    min = optional(number, 2)
    max = optional(number, 10)
  })
  default = {}

  validation {
    condition     = var.ingress_controller_replicas.min >= 2 && var.ingress_controller_replicas.max >= var.ingress_controller_replicas.min
    error_message = "ingress_controller_replicas needs 2 <= min <= max (one replica is a single point of failure)."
  }
}

variable "ingress_controller_service_annotations" {
  description = "Annotations of the controller's LoadBalancer Service (cloud load-balancer settings)."
  type        = map(string)
  default     = {}
}

variable "ingress_controller_source_ranges" {
  description = "CIDR blocks allowed to reach the load balancer (loadBalancerSourceRanges); empty: everyone, as a public sale needs."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.ingress_controller_source_ranges : can(cidrhost(c, 0))])
    error_message = "ingress_controller_source_ranges must hold CIDR blocks."
  }
}
