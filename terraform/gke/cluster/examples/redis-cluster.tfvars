# The spike sizing with Memorystore for Redis Cluster instead of a single-primary instance:
# every sale's keys share one hash slot ({sale-id}), so several sales spread over the shards.
# Apply the app stage afterwards: it tells FlashSale to use Redis Cluster
# (externalRedis.cluster = "true") and opens the nodes' ports in the NetworkPolicy.
# terraform plan -var-file=examples/redis-cluster.tfvars

project_id = "your-project-id"
region     = "us-central1"
name       = "flashsale"

master_authorized_networks = [
  { cidr_block = "203.0.113.0/24", display_name = "office" },
]

node_machine_type = "e2-standard-8"
node_min_count    = 6
node_max_count    = 60

redis_topology                = "cluster"
redis_cluster_shard_count     = 3
redis_cluster_replica_count   = 1
redis_cluster_node_type       = "REDIS_HIGHMEM_MEDIUM"
redis_cluster_psc_subnet_cidr = "10.10.16.0/26"

db_tier                  = "db-custom-8-30720"
db_disk_size_gb          = 200
db_backup_retained_count = 30
