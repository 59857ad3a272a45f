variable "name" {
  type        = string
  description = "Name of the cache tier: prefixes its resources."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,20}$", var.name))
    error_message = "name must be 1-21 characters of a-z, 0-9 and '-' (it prefixes the load balancer's 32-character name)."
  }
}

variable "vpc_id" {
  type        = string
  description = "VPC of the cache hosts and their internal load balancer."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets for the cache hosts and the internal load balancer, one per availability zone."

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids needs at least one subnet."
  }
}

variable "client_cidr_blocks" {
  type        = list(string)
  description = "IPv4 CIDRs of the restore hosts: the only clients the load balancer admits."

  validation {
    condition     = length(var.client_cidr_blocks) > 0 && alltrue([for c in var.client_cidr_blocks : can(cidrnetmask(c)) && c != "0.0.0.0/0"])
    error_message = "client_cidr_blocks needs IPv4 CIDRs, not 0.0.0.0/0."
  }
}

variable "bucket_name" {
  type        = string
  description = "The store's bucket (the chunk-store module's bucket_name). Request paths map to keys unchanged: http://<tier>/<prefix>/chunks/... is s3://<bucket>/<prefix>/chunks/...."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be an S3 bucket name."
  }
}

variable "instance_profile_name" {
  type        = string
  description = "Instance profile of the cache hosts (the iam module's cache_tier_instance_profile_name): reads the store, writes nothing."
}

variable "instance_type" {
  type        = string
  description = "EC2 instance type of the cache hosts. The tier moves bytes: favour network bandwidth (the \"n\" types)."
  default     = "c6in.xlarge"
}

variable "ami_id" {
  type        = string
  description = "AMI, or an SSM parameter as resolve:ssm:<name>. The user data assumes Amazon Linux 2023 (dnf, its nginx package and unit)."
  default     = "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

variable "min_size" {
  type        = number
  description = "Fewest cache hosts."
  default     = 2
}

variable "max_size" {
  type        = number
  description = "Most cache hosts."
  default     = 4
}

variable "desired_capacity" {
  type        = number
  description = "Cache hosts to start with. Each host fills its own cache, so every host added means up to one more S3 read of each chunk."
  default     = 2
}

variable "cache_size_gb" {
  type        = number
  description = "Bytes of chunks each host keeps (nginx max_size, least recently used evicted beyond it). The root volume is made this plus 20 GB."
  default     = 200

  validation {
    condition     = var.cache_size_gb >= 1
    error_message = "cache_size_gb must be at least 1."
  }
}

variable "volume_throughput_mbps" {
  type        = number
  description = "gp3 throughput of the root volume, which holds the cache (125-1000 MB/s)."
  default     = 500

  validation {
    condition     = var.volume_throughput_mbps >= 125 && var.volume_throughput_mbps <= 1000
    error_message = "volume_throughput_mbps must be between 125 and 1000."
  }
}

variable "ebs_kms_key_arn" {
  type        = string
  description = "KMS key for the root volume; null uses the account's default EBS key. Volumes are encrypted either way."
  default     = null
}

variable "certificate_arn" {
  type        = string
  description = "ACM certificate for dns_name. When set, the load balancer listens with TLS on 443 (url becomes https://); otherwise plain HTTP on 80 inside the VPC. lazysnap verifies every chunk's BLAKE3 against the manifest either way, but TLS also keeps snapshot bytes private on the wire and protects the manifests themselves."
  default     = null
}

variable "dns_name" {
  type        = string
  description = "A DNS name the operator points at the load balancer (for the certificate). Null uses the load balancer's own name."
  default     = null
}

variable "node_version" {
  type        = string
  description = "Node.js for the signing S3 origin: a major line (\"22\") or an exact version."
  default     = "22"

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+\\.[0-9]+)?$", var.node_version)) && tonumber(split(".", var.node_version)[0]) >= 20
    error_message = "node_version must be a major version (>= 20) or an exact x.y.z version."
  }
}

variable "node_sha256" {
  type        = string
  description = "SHA-256 of the linux-x64 tarball of an exact node_version; null checks the release's SHASUMS256.txt instead."
  default     = null

  validation {
    condition     = var.node_sha256 == null || can(regex("^[0-9a-f]{64}$", var.node_sha256))
    error_message = "node_sha256 must be 64 lowercase hex digits."
  }
}

variable "aws_sdk_version" {
  type        = string
  description = "Version of @aws-sdk/client-s3 the signing origin installs (the one lazysnap's tests run it with)."
  default     = "3.1175.0"

  validation {
    condition     = can(regex("^3\\.[0-9]+\\.[0-9]+$", var.aws_sdk_version))
    error_message = "aws_sdk_version must be an exact 3.x.y version."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource the module creates, and to the hosts."
  default     = {}
}
