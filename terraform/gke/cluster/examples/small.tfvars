# A small production-like install: a few thousand shoppers per sale.
# terraform plan -var-file=examples/small.tfvars   (rough cost: terraform/README.md)

project_id = "your-project-id"
region     = "us-central1"
name       = "flashsale"

# Who may reach the Kubernetes API (replace with your office / VPN / CI egress ranges).
master_authorized_networks = [
  { cidr_block = "203.0.113.0/24", display_name = "office" },
]

node_machine_type = "e2-standard-4"
node_min_count    = 3
node_max_count    = 6

redis_memory_size_gb = 5

db_tier         = "db-custom-2-7680"
db_disk_size_gb = 50
