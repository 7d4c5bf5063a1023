# The Kubernetes Cluster Autoscaler: grows and shrinks the managed node groups between
# node_min_count and node_max_count. Its IAM role and the EKS Pod Identity association that
# binds it to the service account below were made by the cluster stage
# (../cluster/autoscaler.tf).

resource "helm_release" "cluster_autoscaler" {
  name        = "cluster-autoscaler"
  repository  = "https://kubernetes.github.io/autoscaler"
  chart       = "cluster-autoscaler"
  version     = var.cluster_autoscaler_chart_version
  namespace   = local.cluster.cluster_autoscaler_service_account.namespace
  atomic      = true
  wait        = true
  max_history = 10

  values = [yamlencode({
    cloudProvider = "aws"
    awsRegion     = local.cluster.region
    autoDiscovery = {
      clusterName = local.cluster.cluster_name
    }
    # The autoscaler's minor version must match the cluster's.
    image = {
      tag = "v${local.cluster.kubernetes_version}.0"
    }
    rbac = {
      serviceAccount = {
        create = true
        name   = local.cluster.cluster_autoscaler_service_account.name
      }
    }
    extraArgs = {
      balance-similar-node-groups   = true
      expander                      = "least-waste"
      skip-nodes-with-system-pods   = false
      scale-down-unneeded-time      = "10m"
      scale-down-delay-after-add    = "10m"
      max-node-provision-time       = "10m"
      new-pod-scale-up-delay        = "0s"
      skip-nodes-with-local-storage = false
    }
  })]
}
