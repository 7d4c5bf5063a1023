# Public subnets hold only the load balancers and NAT gateways; nodes, Redis and PostgreSQL live
# in private subnets. Private subnets get a /20 per zone (VPC CNI gives every pod a VPC address).

module "vpc" {
  #checkov:skip=CKV_TF_1:Registry module, pinned by the version constraint below; a commit hash applies only to git sources
  source  = "terraform-aws-modules/vpc/aws"
  version = "~> 6.4"

  name = var.name
  cidr = var.vpc_cidr
  azs  = local.azs

  private_subnets     = [for i in range(local.az_count) : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnets      = [for i in range(local.az_count) : cidrsubnet(var.vpc_cidr, 8, 64 + i)]
  database_subnets    = [for i in range(local.az_count) : cidrsubnet(var.vpc_cidr, 8, 68 + i)]
  elasticache_subnets = [for i in range(local.az_count) : cidrsubnet(var.vpc_cidr, 8, 72 + i)]

  create_database_subnet_group    = true
  create_elasticache_subnet_group = true

  enable_nat_gateway     = true
  single_nat_gateway     = var.single_nat_gateway
  one_nat_gateway_per_az = !var.single_nat_gateway

  enable_dns_hostnames = true
  enable_dns_support   = true

  # The default security group allows nothing.
  manage_default_security_group  = true
  default_security_group_ingress = []
  default_security_group_egress  = []

  enable_flow_log                                 = true
  create_flow_log_cloudwatch_log_group            = true
  create_flow_log_cloudwatch_iam_role             = true
  flow_log_max_aggregation_interval               = 60
  flow_log_cloudwatch_log_group_retention_in_days = 365
  flow_log_cloudwatch_log_group_kms_key_id        = aws_kms_key.this.arn

  # Where Kubernetes puts internet-facing and internal load balancers.
  public_subnet_tags = {
    "kubernetes.io/role/elb" = 1
  }
  private_subnet_tags = {
    "kubernetes.io/role/internal-elb" = 1
  }
}
