# FlashSale on the cluster of ../cluster/examples/spike.tfvars (or redis-cluster.tfvars): hundreds
# of thousands of shoppers arriving within minutes. Raise api_min_replicas before the opening
# (or let the FlashSale operator pre-scale the API), and lower it again afterwards.
# terraform plan -var-file=examples/spike.tfvars   (after the cluster stage's apply)

cluster_state_backend = "local"
cluster_state_config  = { path = "../cluster/terraform.tfstate" }

api_min_replicas = 10
api_max_replicas = 150
