# The cluster stage (../cluster) created the cluster and the data stores; this stage reads its
# outputs, finds the running cluster by name, and only then configures the Kubernetes-side
# providers. Nothing here creates the cluster the providers talk to, so a plan never depends on
# a cluster that does not exist yet.

data "terraform_remote_state" "cluster" {
  backend = var.cluster_state_backend
  config  = var.cluster_state_config
}

locals {
  cluster = data.terraform_remote_state.cluster.outputs
}

provider "aws" {
  region = local.cluster.region
}

data "aws_eks_cluster" "this" {
  name = local.cluster.cluster_name
}

locals {
  kubernetes_host = data.aws_eks_cluster.this.endpoint
  kubernetes_ca   = base64decode(data.aws_eks_cluster.this.certificate_authority[0].data)
  # A short-lived token from the AWS CLI, fetched whenever a provider connects.
  kubernetes_exec = {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", local.cluster.cluster_name, "--region", local.cluster.region]
  }
}

provider "kubernetes" {
  host                   = local.kubernetes_host
  cluster_ca_certificate = local.kubernetes_ca

  exec {
    api_version = local.kubernetes_exec.api_version
    command     = local.kubernetes_exec.command
    args        = local.kubernetes_exec.args
  }
}

provider "helm" {
  kubernetes = {
    host                   = local.kubernetes_host
    cluster_ca_certificate = local.kubernetes_ca
    exec                   = local.kubernetes_exec
  }
}
