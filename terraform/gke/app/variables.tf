# ---------------------------------------------------------------------------------------------
# Where the cluster stage keeps its state (its outputs name the cluster and the data stores)
# ---------------------------------------------------------------------------------------------

variable "cluster_state_backend" {
  description = "Backend holding the cluster stage's state: gcs (recommended) or local (the default layout, ../cluster/terraform.tfstate)."
  type        = string
  default     = "local"

  validation {
    condition     = contains(["gcs", "local"], var.cluster_state_backend)
    error_message = "cluster_state_backend must be gcs or local."
  }
}

variable "cluster_state_config" {
  description = "Settings of that backend, as in the cluster stage's backend block: { bucket, prefix } for gcs, { path } for local."
  type        = map(string)
  default = {
    path = "../cluster/terraform.tfstate"
  }

  validation {
    condition = (
      var.cluster_state_backend == "gcs" ? alltrue([for k in ["bucket", "prefix"] : contains(keys(var.cluster_state_config), k)]) :
      contains(keys(var.cluster_state_config), "path")
    )
    error_message = "cluster_state_config needs bucket and prefix for the gcs backend, path for the local one."
  }
}

# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------

variable "chart_path" {
  description = "Path of the FlashSale chart; null: the repository's charts/flashsale."
  type        = string
  default     = null
}

variable "image_repository" {
  description = "FlashSale container image repository (for example an Artifact Registry path); null: the chart's default."
  type        = string
  default     = null
}

variable "image_tag" {
  description = "FlashSale container image tag; null: the chart's default."
  type        = string
  default     = null
}

variable "api_min_replicas" {
  description = "API pods kept running before a sale."
  type        = number
  default     = 3

  validation {
    condition     = var.api_min_replicas >= 1
    error_message = "api_min_replicas must be at least 1."
  }
}

variable "api_max_replicas" {
  description = "Most API pods during a spike."
  type        = number
  default     = 30

  validation {
    condition     = var.api_max_replicas >= var.api_min_replicas
    error_message = "api_max_replicas must be at least api_min_replicas."
  }
}

variable "ingress_host" {
  description = "Host name shoppers use; empty: any host at the load balancer's IP."
  type        = string
  default     = ""

  validation {
    condition     = var.ingress_host == "" || can(regex("^([a-z0-9]([-a-z0-9]*[a-z0-9])?\\.)+[a-z]{2,}$", var.ingress_host))
    error_message = "ingress_host must be empty or a lowercase DNS name."
  }
}

variable "token_key" {
  description = "FLASHSALE_TOKEN_KEY (at least 32 characters); null: generated and kept in the state."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.token_key == null ? true : length(var.token_key) >= 32
    error_message = "token_key must be at least 32 characters long."
  }
}

variable "admin_token" {
  description = "FLASHSALE_ADMIN_TOKEN; null: generated and kept in the state (see the admin_token output)."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.admin_token == null ? true : length(var.admin_token) >= 24
    error_message = "admin_token must be at least 24 characters long."
  }
}

variable "token_key_previous" {
  description = "FLASHSALE_TOKEN_KEY_PREVIOUS: the key before a rotation, still accepted; empty: none."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.token_key_previous == "" || length(var.token_key_previous) >= 32
    error_message = "token_key_previous must be empty or at least 32 characters long."
  }
}
