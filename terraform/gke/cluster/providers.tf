# The cluster stage talks to Google Cloud only. The Kubernetes and Helm providers live in the
# app stage (../app), configured from this stage's outputs once the cluster exists.
provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = local.labels
}
