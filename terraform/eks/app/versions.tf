terraform {
  # 1.9+: validations may refer to other variables; mock_provider (terraform test) needs 1.7+.
  required_version = ">= 1.9.0, < 2.0.0"

  # random comes with ../../modules/flashsale, which pins it.
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.56"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 3.1"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 3.5"
    }
  }

  # State holds the generated keys and the connection strings: keep it in an encrypted,
  # access-controlled bucket. See terraform/README.md ("Remote state") for a backend "s3" block
  # to add here.
}
