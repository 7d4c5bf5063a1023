# ElastiCache for Redis: a primary and replicas in different zones with automatic failover,
# encrypted at rest (KMS) and in transit (TLS), AUTH token required, reachable only from the
# cluster's nodes.

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

resource "aws_elasticache_parameter_group" "redis" {
  name   = "${var.name}-redis7"
  family = "redis7"

  # Holds, admissions and rate-limit windows expire: evict nothing else under pressure.
  parameter {
    name  = "maxmemory-policy"
    value = "volatile-lru"
  }
}

resource "aws_cloudwatch_log_group" "redis_slow_log" {
  name              = "/aws/elasticache/${var.name}/slow-log"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.this.arn
}

resource "aws_elasticache_replication_group" "this" {
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
  # ElastiCache certificates come from Amazon's public CA and name the endpoint: the default
  # verification of redis-py (ssl_cert_reqs=required, hostname checked) applies as it is.
  redis_url = format(
    "rediss://:%s@%s:%d/0",
    urlencode(random_password.redis_auth.result),
    aws_elasticache_replication_group.this.primary_endpoint_address,
    aws_elasticache_replication_group.this.port,
  )
}
