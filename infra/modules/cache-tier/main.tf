# lazysnap's HTTP cache tier: nginx proxy_cache hosts behind an internal Network Load Balancer,
# in front of the store's bucket. Restore hosts list it as their first --store, before s3://.
#
#   restore host ──HTTP──► internal NLB ──► nginx (proxy_cache, on disk)
#                                              │ miss
#                                              ▼
#                                        s3-origin.mjs on 127.0.0.1 ──signed HTTPS──► S3
#
# nginx.conf.tftpl is also the configuration test/helpers/nginx.ts runs the HTTP-tier tests
# through: one file, rendered by templatefile() here and by the tests.

data "aws_region" "current" {}

locals {
  origin_port = 8081
  cache_dir   = "/var/cache/lazysnap"
  listen_port = var.certificate_arn == null ? 80 : 443
  url         = "${var.certificate_arn == null ? "http" : "https"}://${var.dns_name != null ? var.dns_name : aws_lb.this.dns_name}"

  nginx_conf = templatefile("${path.module}/nginx.conf.tftpl", {
    user             = "nginx"
    worker_processes = "auto"
    run_dir          = "/run"
    log_dir          = "/var/log/nginx"
    cache_dir        = local.cache_dir
    listen           = "80"
    origin           = "127.0.0.1:${local.origin_port}"
    cache_max_size   = "${var.cache_size_gb}g"
    # About 8,000 keys per MB of zone; chunks average a few hundred KiB stored (512 KiB chunks
    # compressed), so count one key per 256 KiB of cache.
    keys_zone_size = "${max(16, ceil(var.cache_size_gb * 4096 / 8000))}m"
  })

  user_data = templatefile("${path.module}/user-data.sh.tftpl", {
    node_version     = var.node_version
    node_sha256      = var.node_sha256 == null ? "" : var.node_sha256
    install_node     = file("${path.module}/../../bootstrap/install-node.sh")
    aws_sdk_version  = var.aws_sdk_version
    s3_origin_script = chomp(file("${path.module}/s3-origin.mjs"))
    s3_origin_unit   = chomp(file("${path.module}/s3-origin.service"))
    bucket_name      = var.bucket_name
    region           = data.aws_region.current.id
    origin_port      = local.origin_port
    cache_dir        = local.cache_dir
    nginx_conf       = chomp(local.nginx_conf)
  })
}

# ---- network -------------------------------------------------------------------------------------

resource "aws_security_group" "lb" {
  name_prefix = "${var.name}-cache-lb-"
  description = "lazysnap cache tier load balancer: restore hosts in, cache hosts out"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-cache-lb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "lb_clients" {
  for_each = toset(var.client_cidr_blocks)

  security_group_id = aws_security_group.lb.id
  description       = "Restore hosts"
  ip_protocol       = "tcp"
  from_port         = local.listen_port
  to_port           = local.listen_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "lb_to_hosts" {
  security_group_id            = aws_security_group.lb.id
  description                  = "Cache hosts (traffic and health checks)"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.hosts.id
}

resource "aws_security_group" "hosts" {
  name_prefix = "${var.name}-cache-"
  description = "lazysnap cache hosts: nginx from the load balancer only"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-cache" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "hosts_from_lb" {
  security_group_id            = aws_security_group.hosts.id
  description                  = "nginx, through the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.lb.id
}

resource "aws_vpc_security_group_egress_rule" "hosts_https" {
  security_group_id = aws_security_group.hosts.id
  description       = "S3 (the signing origin), package downloads at boot"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_lb" "this" {
  name                             = "${var.name}-cache"
  internal                         = true
  load_balancer_type               = "network"
  subnets                          = var.subnet_ids
  security_groups                  = [aws_security_group.lb.id]
  enable_cross_zone_load_balancing = true
  tags                             = var.tags
}

resource "aws_lb_target_group" "this" {
  name_prefix          = "lzc-"
  port                 = 80
  protocol             = "TCP"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  tags                 = var.tags

  health_check {
    protocol = "HTTP"
    path     = "/healthz"
    port     = "traffic-port"
    matcher  = "200"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb_listener" "this" {
  load_balancer_arn = aws_lb.this.arn
  port              = local.listen_port
  protocol          = var.certificate_arn == null ? "TCP" : "TLS"
  certificate_arn   = var.certificate_arn
  ssl_policy        = var.certificate_arn == null ? null : "ELBSecurityPolicy-TLS13-1-2-2021-06"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  lifecycle {
    precondition {
      condition     = var.certificate_arn == null || var.dns_name != null
      error_message = "A TLS listener needs dns_name: the name its certificate is for, which restore hosts then use."
    }
  }
}

# ---- hosts ---------------------------------------------------------------------------------------

resource "aws_launch_template" "this" {
  name_prefix            = "${var.name}-cache-"
  description            = "lazysnap cache tier host"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.hosts.id]
  update_default_version = true
  # gzip: nginx.conf, the origin script and its unit together crowd the 16 KiB user data limit.
  user_data = base64gzip(local.user_data)

  iam_instance_profile {
    name = var.instance_profile_name
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_type           = "gp3"
      volume_size           = var.cache_size_gb + 20
      throughput            = var.volume_throughput_mbps
      encrypted             = true
      kms_key_id            = var.ebs_kms_key_arn
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-cache" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name}-cache" })
  }

  tags = var.tags
}

resource "aws_autoscaling_group" "this" {
  name_prefix               = "${var.name}-cache-"
  vpc_zone_identifier       = var.subnet_ids
  min_size                  = var.min_size
  max_size                  = var.max_size
  desired_capacity          = var.desired_capacity
  target_group_arns         = [aws_lb_target_group.this.arn]
  health_check_type         = "ELB"
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  # A replaced cache host starts empty; replacing one at a time keeps the rest of the cache warm.
  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = 50
    }
  }

  dynamic "tag" {
    for_each = var.tags

    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}
