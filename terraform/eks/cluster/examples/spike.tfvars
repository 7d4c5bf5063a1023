# Sized for a large flash sale: hundreds of thousands of shoppers arriving within minutes.
# Raise node_min_count (here) and api_min_replicas (the app stage) before the opening (or let
# the FlashSale operator pre-scale the API), and lower them again afterwards.
# terraform plan -var-file=examples/spike.tfvars   (rough cost: terraform/README.md)

region             = "us-east-1"
availability_zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
name               = "flashsale"

cluster_endpoint_public_access_cidrs = ["203.0.113.0/24"]

single_nat_gateway = false

node_instance_types = ["m6i.2xlarge", "m5.2xlarge", "m7i.2xlarge"]
node_min_count      = 6
node_max_count      = 60

redis_node_type = "cache.r7g.xlarge"
redis_replicas  = 2

db_instance_class           = "db.m7g.2xlarge"
db_allocated_storage_gb     = 200
db_max_allocated_storage_gb = 1000
db_backup_retention_days    = 30
