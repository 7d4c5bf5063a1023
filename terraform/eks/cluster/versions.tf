terraform {
  # 1.9+: validations may refer to other variables; mock_provider (terraform test) needs 1.7+;
  # terraform-aws-modules/eks 21 needs 1.5.7+.
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    # terraform-aws-modules/eks 21 and vpc 6 need aws 6.
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.56"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.9"
    }
    # Used inside terraform-aws-modules/eks (OIDC thumbprint, node user data, waits), which
    # requires only lower bounds: pinned here so every provider of this root has an upper bound.
    # tflint-ignore: terraform_unused_required_providers
    cloudinit = {
      source  = "hashicorp/cloudinit"
      version = "~> 2.3"
    }
    # tflint-ignore: terraform_unused_required_providers
    time = {
      source  = "hashicorp/time"
      version = "~> 0.14"
    }
    # tflint-ignore: terraform_unused_required_providers
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.3"
    }
  }

  # State holds the generated passwords and keys: keep it in an encrypted, access-controlled
  # bucket. See terraform/README.md ("Remote state") for a backend "s3" block to add here.
}
