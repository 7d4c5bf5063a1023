# The cluster stage talks to AWS only. The Kubernetes and Helm providers live in the app stage
# (../app), configured from this stage's outputs once the cluster exists.
provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}
