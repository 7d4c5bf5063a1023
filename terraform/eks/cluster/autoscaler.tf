# Managed node groups do not grow by themselves: the Kubernetes Cluster Autoscaler (installed by
# the app stage, ../app/autoscaler.tf) adds nodes when API pods (scaled by their HPA) cannot be
# scheduled, between node_min_count and node_max_count, and removes them after the sale. It
# finds the groups through the tags EKS puts on their Auto Scaling groups and acts through EKS
# Pod Identity (no static credentials): its AWS identity is made here, with the cluster.

locals {
  cluster_autoscaler_namespace = "kube-system"
  cluster_autoscaler_sa        = "cluster-autoscaler"
}

data "aws_iam_policy_document" "cluster_autoscaler_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "Service"
      identifiers = ["pods.eks.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "cluster_autoscaler" {
  # Read-only discovery calls, which take no resource-level permissions.
  statement {
    sid = "Discover"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "autoscaling:DescribeTags",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "DescribeNodegroups"
    actions   = ["eks:DescribeNodegroup"]
    resources = ["arn:${data.aws_partition.current.partition}:eks:${var.region}:${data.aws_caller_identity.current.account_id}:nodegroup/${var.name}/*"]
  }

  # Resizing only the Auto Scaling groups of this cluster's managed node groups.
  statement {
    sid = "ResizeOwnNodeGroups"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    resources = ["arn:${data.aws_partition.current.partition}:autoscaling:${var.region}:${data.aws_caller_identity.current.account_id}:autoScalingGroup:*:autoScalingGroupName/eks-*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${var.name}"
      values   = ["owned"]
    }
  }
}

resource "aws_iam_role" "cluster_autoscaler" {
  name_prefix        = "${var.name}-autoscaler-"
  assume_role_policy = data.aws_iam_policy_document.cluster_autoscaler_assume.json
}

resource "aws_iam_role_policy" "cluster_autoscaler" {
  name   = "cluster-autoscaler"
  role   = aws_iam_role.cluster_autoscaler.id
  policy = data.aws_iam_policy_document.cluster_autoscaler.json
}

resource "aws_eks_pod_identity_association" "cluster_autoscaler" {
  cluster_name    = module.eks.cluster_name
  namespace       = local.cluster_autoscaler_namespace
  service_account = local.cluster_autoscaler_sa
  role_arn        = aws_iam_role.cluster_autoscaler.arn

  depends_on = [aws_iam_role_policy.cluster_autoscaler]
}
