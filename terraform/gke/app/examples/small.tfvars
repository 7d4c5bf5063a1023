# FlashSale on the cluster of ../cluster/examples/small.tfvars: a few thousand shoppers per sale.
# terraform plan -var-file=examples/small.tfvars   (after the cluster stage's apply)

# Where the cluster stage keeps its state. With a gcs backend there (see terraform/README.md):
#   cluster_state_backend = "gcs"
#   cluster_state_config  = { bucket = "my-tf-state", prefix = "flashsale/gke/cluster" }
cluster_state_backend = "local"
cluster_state_config  = { path = "../cluster/terraform.tfstate" }

api_min_replicas = 2
api_max_replicas = 10
