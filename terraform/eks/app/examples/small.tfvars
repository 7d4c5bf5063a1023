# FlashSale on the cluster of ../cluster/examples/small.tfvars: a few thousand shoppers per sale.
# terraform plan -var-file=examples/small.tfvars   (after the cluster stage's apply)

# Where the cluster stage keeps its state. With an s3 backend there (see terraform/README.md):
#   cluster_state_backend = "s3"
#   cluster_state_config  = { bucket = "my-tf-state", key = "flashsale/eks/cluster/terraform.tfstate", region = "us-east-1" }
cluster_state_backend = "local"
cluster_state_config  = { path = "../cluster/terraform.tfstate" }

api_min_replicas = 2
api_max_replicas = 10
