# The spike sizing with ElastiCache cluster mode instead of a single-primary replication group:
# every sale's keys share one hash slot ({sale-id}), so several sales spread over the shards.
# Apply the app stage afterwards: it tells FlashSale to use Redis Cluster
# (externalRedis.cluster = "true").
# terraform plan -var-file=examples/redis-cluster.tfvars

region             = "us-east-1"
availability_zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
name               = "flashsale"

cluster_endpoint_public_access_cidrs = ["203.0.113.0/24"]

single_nat_gateway = false

node_instance_types = ["m6i.2xlarge", "m5.2xlarge", "m7i.2xlarge"]
node_min_count      = 6
node_max_count      = 60

redis_topology  = "cluster"
redis_shards    = 3
redis_replicas  = 1
redis_node_type = "cache.r7g.large"

db_instance_class           = "db.m7g.2xlarge"
db_allocated_storage_gb     = 200
db_max_allocated_storage_gb = 1000
db_backup_retention_days    = 30
