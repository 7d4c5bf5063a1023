# FlashSale on an existing cluster: its secrets, the HAProxy ingress controller and the chart.
#
# Connection strings and keys live only in Kubernetes Secrets created here; the chart is told
# their names (externalRedis.existingSecret, externalDatabase.existingSecret,
# tokens.existingSecret), so no secret value ever appears in Helm values or release history.

locals {
  chart_path = coalesce(var.chart_path, "${path.module}/../../../charts/flashsale")

  common_labels = merge(var.labels, {
    "app.kubernetes.io/part-of"    = "flashsale"
    "app.kubernetes.io/managed-by" = "terraform"
  })

  # Secret names, and the keys the chart reads from them (charts/flashsale/templates/_helpers.tpl).
  redis_secret_name     = "${var.release_name}-redis"
  database_secret_name  = "${var.release_name}-database"
  tokens_secret_name    = "${var.release_name}-tokens"
  redis_secret_entry    = "redis-url"
  database_secret_entry = "database-url"

  # Zero or one port range of Redis Cluster nodes, as a list to build NetworkPolicy rules from.
  redis_node_port_ranges = var.redis_node_port_range == null ? [] : [var.redis_node_port_range]

  ingress_controller_release = "haproxy-ingress"
  # fullnameOverride below makes the controller's Service name predictable.
  ingress_controller_service = local.ingress_controller_release

  # Values for the FlashSale chart (charts/flashsale/values.yaml). Only names, never secrets.
  chart_values = {
    serviceAccount = {
      create      = true
      name        = var.service_account_name
      annotations = var.service_account_annotations
    }
    # The managed services replace the chart's own Redis and PostgreSQL.
    redis      = { enabled = false }
    postgresql = { enabled = false }
    externalRedis = {
      existingSecret    = local.redis_secret_name
      existingSecretKey = local.redis_secret_entry
    }
    externalDatabase = {
      existingSecret    = local.database_secret_name
      existingSecretKey = local.database_secret_entry
    }
    tokens = {
      existingSecret = local.tokens_secret_name
    }
    api = {
      autoscaling = {
        enabled                        = var.api_autoscaling.enabled
        minReplicas                    = var.api_autoscaling.min_replicas
        maxReplicas                    = var.api_autoscaling.max_replicas
        targetCPUUtilizationPercentage = var.api_autoscaling.target_cpu_utilization_percentage
      }
    }
    ingress = {
      enabled   = true
      className = "haproxy"
      hostname  = var.ingress_host
      tls = {
        enabled    = var.ingress_tls_secret_name != ""
        secretName = var.ingress_tls_secret_name
      }
    }
    # FlashSale pods may reach the data stores only at these addresses and ports.
    networkPolicy = {
      enabled        = true
      dataStoreCidrs = var.data_store_cidrs
      redisPort      = var.redis_port
      postgresqlPort = var.postgresql_port
      # Redis Cluster nodes that listen beyond redis_port (Memorystore for Redis Cluster); an
      # empty `to` (no data_store_cidrs) means any address, as for redisPort.
      extraEgress = [
        for node_ports in local.redis_node_port_ranges : {
          to    = [for c in var.data_store_cidrs : { ipBlock = { cidr = c } }]
          ports = [{ port = node_ports.from, endPort = node_ports.to, protocol = "TCP" }]
        }
      ]
    }
  }

  # Only for a Redis Cluster: the chart's values schema refuses keys it does not know, so the key
  # is not sent at all otherwise (FLASHSALE_REDIS_CLUSTER then keeps the chart's default).
  redis_cluster_values = {
    externalRedis = {
      cluster = "true"
    }
  }

  image_values = {
    image = merge(
      var.image_repository == null ? {} : { repository = var.image_repository },
      var.image_tag == null ? {} : { tag = var.image_tag },
    )
  }

  # Values for haproxytech/kubernetes-ingress (https://github.com/haproxytech/helm-charts).
  ingress_controller_values = {
    fullnameOverride = local.ingress_controller_service
    controller = {
      kind         = "Deployment"
      replicaCount = var.ingress_controller_replicas.min
      ingressClass = "haproxy"
      ingressClassResource = {
        name    = "haproxy"
        default = false
      }
      autoscaling = {
        enabled                        = true
        minReplicas                    = var.ingress_controller_replicas.min
        maxReplicas                    = var.ingress_controller_replicas.max
        targetCPUUtilizationPercentage = 70
      }
      PodDisruptionBudget = {
        enable       = true
        minAvailable = 1
      }
      resources = {
        requests = { cpu = "500m", memory = "512Mi" }
      }
      topologySpreadConstraints = [{
        maxSkew           = 1
        topologyKey       = "topology.kubernetes.io/zone"
        whenUnsatisfiable = "ScheduleAnyway"
        labelSelector = {
          matchLabels = {
            "app.kubernetes.io/name"     = "kubernetes-ingress"
            "app.kubernetes.io/instance" = local.ingress_controller_release
          }
        }
      }]
      service = {
        type = "LoadBalancer"
        # Local keeps the shopper's address for the per-address join limits.
        externalTrafficPolicy    = "Local"
        annotations              = var.ingress_controller_service_annotations
        loadBalancerSourceRanges = var.ingress_controller_source_ranges
      }
    }
  }
}

resource "kubernetes_namespace_v1" "this" {
  count = var.create_namespace ? 1 : 0

  metadata {
    name = var.namespace
    labels = merge(local.common_labels, {
      "pod-security.kubernetes.io/enforce" = "restricted"
      "pod-security.kubernetes.io/audit"   = "restricted"
      "pod-security.kubernetes.io/warn"    = "restricted"
    })
  }
}

locals {
  # The namespace name, after the namespace exists (so secrets wait for it).
  namespace = var.create_namespace ? kubernetes_namespace_v1.this[0].metadata[0].name : var.namespace
}

# Generated only to be used when no key is given: a key that is not passed in stays stable across
# applies because it lives in the state (which must therefore be stored encrypted).
resource "random_password" "token_key" {
  length  = 64
  special = false
}

resource "random_password" "admin_token" {
  length  = 48
  special = false
}

resource "kubernetes_secret_v1" "redis" {
  metadata {
    name      = local.redis_secret_name
    namespace = local.namespace
    labels    = local.common_labels
  }
  type = "Opaque"
  data = {
    (local.redis_secret_entry) = var.redis_url
  }
}

resource "kubernetes_secret_v1" "database" {
  metadata {
    name      = local.database_secret_name
    namespace = local.namespace
    labels    = local.common_labels
  }
  type = "Opaque"
  data = {
    (local.database_secret_entry) = var.database_url
  }
}

resource "kubernetes_secret_v1" "tokens" {
  metadata {
    name      = local.tokens_secret_name
    namespace = local.namespace
    labels    = local.common_labels
  }
  type = "Opaque"
  # Keys read by the chart: token-key, token-key-previous (optional) and admin-token.
  data = merge(
    {
      "token-key"   = coalesce(var.token_key, random_password.token_key.result)
      "admin-token" = coalesce(var.admin_token, random_password.admin_token.result)
    },
    var.token_key_previous == "" ? {} : { "token-key-previous" = var.token_key_previous },
  )
}

resource "helm_release" "ingress_controller" {
  count = var.install_ingress_controller ? 1 : 0

  name             = local.ingress_controller_release
  repository       = "https://haproxytech.github.io/helm-charts"
  chart            = "kubernetes-ingress"
  version          = var.ingress_controller_chart_version
  namespace        = var.ingress_controller_namespace
  create_namespace = true
  atomic           = true
  wait             = true
  timeout          = var.helm_timeout_seconds
  max_history      = 10

  values = [yamlencode(local.ingress_controller_values)]
}

resource "helm_release" "flashsale" {
  name        = var.release_name
  repository  = var.chart_repository
  chart       = var.chart_repository == null ? local.chart_path : coalesce(var.chart_path, "flashsale")
  version     = var.chart_repository == null ? null : var.chart_version
  namespace   = local.namespace
  atomic      = true
  wait        = true
  timeout     = var.helm_timeout_seconds
  max_history = 10

  values = concat(
    [yamlencode(local.chart_values), yamlencode(local.image_values)],
    var.redis_cluster ? [yamlencode(local.redis_cluster_values)] : [],
    var.extra_values,
  )

  depends_on = [
    kubernetes_secret_v1.redis,
    kubernetes_secret_v1.database,
    kubernetes_secret_v1.tokens,
    # The IngressClass must exist before the chart's Ingress is admitted.
    helm_release.ingress_controller,
  ]
}

# The controller's Service, read back after the release so its load-balancer address is known.
data "kubernetes_service_v1" "ingress_controller" {
  count = var.install_ingress_controller ? 1 : 0

  metadata {
    name      = local.ingress_controller_service
    namespace = var.ingress_controller_namespace
  }

  depends_on = [helm_release.ingress_controller]
}
