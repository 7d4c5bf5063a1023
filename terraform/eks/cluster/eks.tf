# EKS with one managed node group in the private subnets. The API endpoint is private inside the
# VPC and, when cluster_endpoint_public_access is on, public only to the listed CIDR blocks.
# terraform-aws-modules/eks 21 dropped the cluster_ prefix of its inputs (docs/UPGRADE-21.0.md):
# name, kubernetes_version, endpoint_*, enabled_log_types, addons.

module "eks" {
  #checkov:skip=CKV_TF_1:Registry module, pinned by the version constraint below; a commit hash applies only to git sources
  source  = "terraform-aws-modules/eks/aws"
  version = "~> 21.9"

  name               = var.name
  kubernetes_version = var.kubernetes_version

  endpoint_private_access      = true
  endpoint_public_access       = var.cluster_endpoint_public_access
  endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs

  vpc_id                   = module.vpc.vpc_id
  subnet_ids               = module.vpc.private_subnets
  control_plane_subnet_ids = module.vpc.private_subnets

  # Access entries only (no aws-auth ConfigMap); whoever runs Terraform becomes cluster admin.
  authentication_mode                      = "API"
  enable_cluster_creator_admin_permissions = true
  enable_irsa                              = true

  # Secrets are envelope-encrypted with a key the module creates; control-plane logs kept a year.
  enabled_log_types                      = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
  cloudwatch_log_group_retention_in_days = 365
  cloudwatch_log_group_kms_key_id        = aws_kms_key.this.arn

  addons = {
    coredns    = {}
    kube-proxy = {}
    vpc-cni = {
      before_compute = true
      # Enforce Kubernetes NetworkPolicy (the chart ships one).
      configuration_values = jsonencode({ enableNetworkPolicy = "true" })
    }
    eks-pod-identity-agent = {
      before_compute = true
    }
  }

  eks_managed_node_groups = {
    app = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.node_instance_types
      capacity_type  = var.node_capacity_type

      min_size     = var.node_min_count
      max_size     = var.node_max_count
      desired_size = var.node_min_count

      labels = {
        "flashsale.io/pool" = "app"
      }

      block_device_mappings = {
        xvda = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size           = var.node_disk_size_gb
            volume_type           = "gp3"
            encrypted             = true
            delete_on_termination = true
          }
        }
      }
    }
  }
}
