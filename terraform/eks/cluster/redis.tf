# ElastiCache for Redis, one of two topologies (var.redis_topology), both encrypted at rest (KMS)
# and in transit (TLS), AUTH token required, reachable only from the cluster's nodes:
#
#   single-primary  a primary and redis_replicas replicas in different zones with automatic
#                   failover (cluster mode disabled); clients use the primary endpoint.
#   cluster         cluster mode enabled: redis_shards shards (node groups), each a primary and
#                   redis_replicas replicas in other zones; clients start at the configuration
#                   endpoint and follow the slot map (FlashSale keeps each sale's keys in one
#                   hash slot with a {sale-id} tag).

resource "aws_security_group" "redis" {
  name_prefix = "${var.name}-redis-"
  description = "FlashSale Redis: reachable from the EKS nodes only"
  vpc_id      = module.vpc.vpc_id

  ingress {
    description     = "Redis over TLS from the EKS nodes"
    from_port       = 6379
    to_port         = 6379
    protocol        = "tcp"
    security_groups = [module.eks.node_security_group_id]
  }

  # No egress rule: Redis never opens connections.

  lifecycle {
    create_before_destroy = true
  }
}

resource "random_password" "redis_auth" {
  # ElastiCache AUTH tokens: 16-128 printable characters without space, quote, '/' or '@'.
  length  = 64
  special = false
}

locals {
  redis_major = split(".", var.redis_engine_version)[0]
}

resource "aws_elasticache_parameter_group" "redis" {
  name   = "${var.name}-redis${local.redis_major}${local.redis_cluster ? "-cluster" : ""}"
  family = "redis${local.redis_major}"

  # Holds, admissions and rate-limit windows expire: evict nothing else under pressure.
  parameter {
    name  = "maxmemory-policy"
    value = "volatile-lru"
  }

  # Cluster mode enabled needs a parameter group that says so.
  dynamic "parameter" {
    for_each = local.redis_cluster ? ["yes"] : []
    content {
      name  = "cluster-enabled"
      value = parameter.value
    }
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_cloudwatch_log_group" "redis_slow_log" {
  name              = "/aws/elasticache/${var.name}/slow-log"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.this.arn
}

# -- single-primary -----------------------------------------------------------------------------

resource "aws_elasticache_replication_group" "this" {
  count = local.redis_cluster ? 0 : 1

  replication_group_id = "${var.name}-redis"
  description          = "FlashSale waiting rooms, stock and holds"

  engine               = "redis"
  engine_version       = var.redis_engine_version
  node_type            = var.redis_node_type
  port                 = 6379
  parameter_group_name = aws_elasticache_parameter_group.redis.name
  num_cache_clusters   = 1 + var.redis_replicas

  automatic_failover_enabled = true
  multi_az_enabled           = true

  subnet_group_name  = module.vpc.elasticache_subnet_group_name
  security_group_ids = [aws_security_group.redis.id]

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.this.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.redis_auth.result
  # aws 6 requires the strategy whenever auth_token is set (no default any more).
  auth_token_update_strategy = "ROTATE"

  snapshot_retention_limit   = var.redis_snapshot_retention_days
  snapshot_window            = "17:00-18:00"
  maintenance_window         = "tue:18:30-tue:19:30"
  auto_minor_version_upgrade = true
  apply_immediately          = false

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.redis_slow_log.name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }
}

# The group had no index before redis_topology existed.
moved {
  from = aws_elasticache_replication_group.this
  to   = aws_elasticache_replication_group.this[0]
}

# -- cluster ------------------------------------------------------------------------------------

resource "aws_elasticache_replication_group" "cluster" {
  count = local.redis_cluster ? 1 : 0

  replication_group_id = "${var.name}-redis-cluster"
  description          = "FlashSale waiting rooms, stock and holds (cluster mode)"

  engine                  = "redis"
  engine_version          = var.redis_engine_version
  node_type               = var.redis_node_type
  port                    = 6379
  parameter_group_name    = aws_elasticache_parameter_group.redis.name
  cluster_mode            = "enabled"
  num_node_groups         = var.redis_shards
  replicas_per_node_group = var.redis_replicas

  automatic_failover_enabled = true
  multi_az_enabled           = true

  subnet_group_name  = module.vpc.elasticache_subnet_group_name
  security_group_ids = [aws_security_group.redis.id]

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.this.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.redis_auth.result
  auth_token_update_strategy = "ROTATE"

  snapshot_retention_limit   = var.redis_snapshot_retention_days
  snapshot_window            = "17:00-18:00"
  maintenance_window         = "tue:18:30-tue:19:30"
  auto_minor_version_upgrade = true
  apply_immediately          = false

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.redis_slow_log.name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }
}

locals {
  # The single-primary group's primary endpoint, or the cluster's configuration endpoint.
  redis_host = local.redis_cluster ? aws_elasticache_replication_group.cluster[0].configuration_endpoint_address : aws_elasticache_replication_group.this[0].primary_endpoint_address
  redis_port = 6379

  # ElastiCache certificates come from Amazon's public CA and name the endpoint (and, in cluster
  # mode, every node's host name the slot map returns): the default verification of redis-py
  # (ssl_cert_reqs=required, hostname checked) applies as it is.
  redis_url = format(
    "rediss://:%s@%s:%d/0",
    urlencode(random_password.redis_auth.result),
    local.redis_host,
    local.redis_port,
  )
}
