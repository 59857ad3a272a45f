output "url" {
  description = "Base URL of the tier. A store at s3://<bucket>/<prefix> is --store <url>/<prefix>; give it to serve before the s3:// URL."
  value       = local.url
}

output "lb_dns_name" {
  description = "DNS name of the internal load balancer."
  value       = aws_lb.this.dns_name
}

output "lb_security_group_id" {
  description = "Security group of the load balancer."
  value       = aws_security_group.lb.id
}

output "hosts_security_group_id" {
  description = "Security group of the cache hosts."
  value       = aws_security_group.hosts.id
}

output "autoscaling_group_name" {
  description = "Name of the cache hosts' autoscaling group."
  value       = aws_autoscaling_group.this.name
}

output "nginx_conf" {
  description = "The nginx configuration the hosts run, rendered from nginx.conf.tftpl."
  value       = local.nginx_conf
}
