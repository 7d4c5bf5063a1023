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

provider "google" {
  project = local.cluster.project_id
  region  = local.cluster.region
}

data "google_client_config" "current" {}

data "google_container_cluster" "this" {
  name     = local.cluster.cluster_name
  location = local.cluster.region
}

locals {
  kubernetes_host = "https://${local.cluster.cluster_private_endpoint_only ? data.google_container_cluster.this.private_cluster_config[0].private_endpoint : data.google_container_cluster.this.endpoint}"
  kubernetes_ca   = base64decode(data.google_container_cluster.this.master_auth[0].cluster_ca_certificate)
}

# Both Kubernetes-side providers talk to the cluster with the caller's own Google token.
provider "kubernetes" {
  host                   = local.kubernetes_host
  token                  = data.google_client_config.current.access_token
  cluster_ca_certificate = local.kubernetes_ca
}

provider "helm" {
  kubernetes = {
    host                   = local.kubernetes_host
    token                  = data.google_client_config.current.access_token
    cluster_ca_certificate = local.kubernetes_ca
  }
}
