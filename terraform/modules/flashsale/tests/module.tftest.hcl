# terraform test (mocked providers): run from terraform/modules/flashsale with
#   terraform init -backend=false && terraform test
# (init downloads the providers once; the plans below run against mocks)

mock_provider "helm" {}
mock_provider "kubernetes" {}
mock_provider "random" {}

variables {
  redis_url    = "rediss://:test-only@redis.internal:6379/0"
  database_url = "postgresql://flashsale:test-only@db.internal:5432/flashsale?sslmode=require"
}

run "secrets_hold_the_connections_and_values_only_name_them" {
  command = plan

  assert {
    condition     = nonsensitive(kubernetes_secret_v1.redis.data["redis-url"] == var.redis_url)
    error_message = "The Redis secret must hold REDIS_URL under the key the chart reads."
  }

  assert {
    condition     = nonsensitive(kubernetes_secret_v1.database.data["database-url"] == var.database_url)
    error_message = "The database secret must hold DATABASE_URL under the key the chart reads."
  }

  assert {
    condition     = yamldecode(helm_release.flashsale.values[0]).externalRedis.existingSecret == "flashsale-redis"
    error_message = "The chart must be pointed at the Redis secret."
  }

  assert {
    condition     = yamldecode(helm_release.flashsale.values[0]).externalDatabase.existingSecretKey == "database-url"
    error_message = "The chart must read database-url from the database secret."
  }

  assert {
    condition     = yamldecode(helm_release.flashsale.values[0]).tokens.existingSecret == "flashsale-tokens"
    error_message = "The chart must be pointed at the tokens secret."
  }

  assert {
    condition     = !strcontains(join("\n", helm_release.flashsale.values), "test-only")
    error_message = "No password may appear in Helm values."
  }

  assert {
    condition     = yamldecode(helm_release.flashsale.values[0]).ingress.className == "haproxy"
    error_message = "The FlashSale Ingress must use the haproxy IngressClass."
  }

  assert {
    condition     = helm_release.ingress_controller[0].chart == "kubernetes-ingress" && helm_release.ingress_controller[0].version == "1.45.0"
    error_message = "The HAProxy controller chart must be haproxytech/kubernetes-ingress at a pinned version."
  }

  assert {
    condition     = yamldecode(helm_release.ingress_controller[0].values[0]).controller.service.type == "LoadBalancer"
    error_message = "The HAProxy controller must be exposed through a LoadBalancer Service."
  }

  assert {
    condition     = kubernetes_namespace_v1.this[0].metadata[0].labels["pod-security.kubernetes.io/enforce"] == "restricted"
    error_message = "The FlashSale namespace must enforce the restricted Pod Security Standard."
  }
}

run "single_redis_is_not_told_it_is_a_cluster" {
  command = plan

  assert {
    condition     = alltrue([for v in helm_release.flashsale.values : !can(yamldecode(v).externalRedis.cluster)])
    error_message = "Without redis_cluster the chart must not receive externalRedis.cluster (its schema may not know it)."
  }

  assert {
    condition     = length(yamldecode(helm_release.flashsale.values[0]).networkPolicy.extraEgress) == 0
    error_message = "Without node ports no extra egress rule may be added."
  }
}

run "redis_cluster_reaches_the_chart_and_its_node_ports_the_network_policy" {
  command = plan

  variables {
    redis_url             = "rediss://:test-only@clustercfg.redis.internal:6379/0"
    redis_cluster         = true
    redis_node_port_range = { from = 11000, to = 13047 }
    data_store_cidrs      = ["10.10.16.0/26"]
  }

  assert {
    condition     = anytrue([for v in helm_release.flashsale.values : try(yamldecode(v).externalRedis.cluster == "true", false)])
    error_message = "redis_cluster must set externalRedis.cluster to \"true\"."
  }

  assert {
    condition = (
      yamldecode(helm_release.flashsale.values[0]).networkPolicy.extraEgress[0].ports[0].port == 11000 &&
      yamldecode(helm_release.flashsale.values[0]).networkPolicy.extraEgress[0].ports[0].endPort == 13047 &&
      yamldecode(helm_release.flashsale.values[0]).networkPolicy.extraEgress[0].to[0].ipBlock.cidr == "10.10.16.0/26"
    )
    error_message = "The nodes' port range must be opened towards the data-store ranges only."
  }
}

run "node_ports_without_a_cluster_are_refused" {
  command = plan

  variables {
    redis_node_port_range = { from = 11000, to = 13047 }
  }

  expect_failures = [var.redis_node_port_range]
}

run "autoscaling_values_reach_the_chart" {
  command = plan

  variables {
    api_autoscaling = {
      min_replicas = 5
      max_replicas = 80
    }
  }

  assert {
    condition     = yamldecode(helm_release.flashsale.values[0]).api.autoscaling.minReplicas == 5 && yamldecode(helm_release.flashsale.values[0]).api.autoscaling.maxReplicas == 80
    error_message = "api_autoscaling must set api.autoscaling.minReplicas and maxReplicas."
  }
}

run "existing_controller_is_not_installed_twice" {
  command = plan

  variables {
    install_ingress_controller = false
  }

  assert {
    condition     = length(helm_release.ingress_controller) == 0
    error_message = "install_ingress_controller = false must not install HAProxy."
  }
}

run "short_token_key_is_refused" {
  command = plan

  variables {
    token_key = "too-short"
  }

  expect_failures = [var.token_key]
}

run "plain_http_redis_url_is_refused" {
  command = plan

  variables {
    redis_url = "http://redis.internal:6379"
  }

  expect_failures = [var.redis_url]
}
