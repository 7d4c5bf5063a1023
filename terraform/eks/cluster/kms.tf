# One customer-managed key (rotated yearly) for the data at rest of this stack: RDS storage and
# Performance Insights, ElastiCache, and the CloudWatch log groups.

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:Key policy, not an identity policy: Resource "*" is this key only; the account statement is the AWS default key policy
  #checkov:skip=CKV_AWS_111:Key policy, not an identity policy: Resource "*" is this key only; the logs statement is limited by an encryption-context condition
  #checkov:skip=CKV_AWS_356:A KMS key policy can only name its own key as "*"; no other resource is reachable through it
  # Key administration and use are delegated to IAM in this account (the AWS default policy).
  # In a key policy "*" is the key itself.
  statement {
    sid       = "AccountIAM"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogs"
    actions = [
      "kms:Decrypt*",
      "kms:Describe*",
      "kms:Encrypt*",
      "kms:GenerateDataKey*",
      "kms:ReEncrypt*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "FlashSale ${var.name}: RDS, ElastiCache and log encryption"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}
