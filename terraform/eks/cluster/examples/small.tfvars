# A small production-like install: a few thousand shoppers per sale.
# terraform plan -var-file=examples/small.tfvars   (rough cost: terraform/README.md)

region             = "us-east-1"
availability_zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
name               = "flashsale"

# Who may reach the public Kubernetes API endpoint (replace with your own ranges).
cluster_endpoint_public_access_cidrs = ["203.0.113.0/24"]

# One NAT gateway: cheaper, but egress (image pulls) stops if its zone fails.
single_nat_gateway = true

node_instance_types = ["m6i.xlarge", "m5.xlarge"]
node_min_count      = 3
node_max_count      = 6

redis_node_type = "cache.t4g.medium"
redis_replicas  = 1

db_instance_class       = "db.t4g.medium"
db_allocated_storage_gb = 50
