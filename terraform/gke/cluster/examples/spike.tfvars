# Sized for a large flash sale: hundreds of thousands of shoppers arriving within minutes.
# Raise node_min_count (here) and api_min_replicas (the app stage) before the opening (or let
# the FlashSale operator pre-scale the API), and lower them again afterwards.
# terraform plan -var-file=examples/spike.tfvars   (rough cost: terraform/README.md)

project_id = "your-project-id"
region     = "us-central1"
name       = "flashsale"

master_authorized_networks = [
  { cidr_block = "203.0.113.0/24", display_name = "office" },
]

node_machine_type = "e2-standard-8"
node_min_count    = 6
node_max_count    = 60

redis_memory_size_gb = 25

db_tier                  = "db-custom-8-30720"
db_disk_size_gb          = 200
db_backup_retained_count = 30
