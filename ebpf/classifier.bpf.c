// SPDX-License-Identifier: GPL-2.0 OR MIT
/* XDP classifier: (802.1Q VLAN id, destination MAC) -> endpoint slot -> AF_XDP socket.
 * Anything it does not claim goes to the kernel (XDP_PASS), where the VLAN
 * sub-interfaces and macvlan devices handle it exactly as without xmacvlan.
 *
 * It is a multi-buffer program (xdp.frags), so it attaches natively to devices whose MTU
 * exceeds a page (jumbo frames): it classifies from the first buffer, which always holds the
 * headers it reads, and a frame longer than its socket takes whole goes to the kernel. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xmacvlan_abi.h"

#define ETH_P_8021Q_BE bpf_htons(0x8100)
#define ETH_P_8021AD_BE bpf_htons(0x88A8)
#define ETH_P_ARP_BE bpf_htons(0x0806)
#define ETH_P_IP_BE bpf_htons(0x0800)
#define ETH_P_IPV6_BE bpf_htons(0x86DD)
#define IPPROTO_ICMP_ 1
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_UDP_ 17
#define DHCP_CLIENT_PORT_BE bpf_htons(68)

const volatile struct xmv_config xmv_config = { .demux = XMV_DEMUX_XDP, .queues = 1 };

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct xmv_key);
	__type(value, __u32);
	__uint(max_entries, XMV_MAX_SLOTS);
} xmv_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, XMV_MAX_SLOTS);
} xmv_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, XMV_MAX_SLOTS);
} xmv_claimed SEC(".maps");

/* Beside each xmv_xsks entry: the longest frame (every buffer of it) its socket takes whole,
 * set by userspace with the socket. Without multi-buffer a socket takes a frame only into one
 * UMEM chunk, and the kernel drops what does not fit after the redirect: a black hole this
 * check turns into XDP_PASS. 0: no socket there. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, XMV_MAX_SLOTS);
} xmv_xsk_max_len SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct xmv_counters);
	__uint(max_entries, 1);
} xmv_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} xmv_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct xmv_event_budget);
	__uint(max_entries, 1);
} xmv_event_budget SEC(".maps");

/* Tell userspace about a frame worth a debug line, within this CPU's budget: a flood of bad
 * frames costs a counter increment each, not a ring buffer write. Off the hot path: only
 * malformed frames, failed redirects and frames too long for their socket get here. */
static __always_inline void report(__u32 kind, struct xdp_md *ctx, const struct xmv_key *key)
{
	__u32 zero = 0;
	struct xmv_event_budget *b = bpf_map_lookup_elem(&xmv_event_budget, &zero);
	if (!b)
		return;
	__u64 now = bpf_ktime_get_ns();
	if (now - b->window_start >= 1000000000ULL) {
		b->window_start = now;
		b->sent = 0;
	}
	if (b->sent >= XMV_EVENTS_PER_SEC) {
		b->suppressed++;
		return;
	}
	struct xmv_event ev = {
		.kind = kind,
		.len = bpf_xdp_get_buff_len(ctx),
		.queue = ctx->rx_queue_index,
		.suppressed = b->suppressed,
		.vid = key->vid,
	};
	__builtin_memcpy(ev.mac, key->mac, ETH_ALEN);
	if (bpf_ringbuf_output(&xmv_events, &ev, sizeof(ev), 0) == 0) {
		b->sent++;
		b->suppressed = 0;
	} else {
		b->suppressed++;
	}
}

struct vlan_tag {
	__be16 tci;
	__be16 inner_proto;
};

/* Traffic the endpoint's kernel device must see for its addresses to work: ARP, ICMP and
 * ICMPv6 (neighbour discovery lives there), and DHCP to the client port (the daemon renews
 * the endpoint's lease through its device; the server's unicast answers carry its MAC).
 * An IP header too short to tell counts too: the kernel decides what to do with it. `l3`
 * points right after the EtherType. */
static __always_inline int is_control(__be16 proto, void *l3, void *data_end)
{
	if (proto == ETH_P_ARP_BE)
		return 1;
	if (proto == ETH_P_IP_BE) {
		__u8 *ip = l3;
		if ((void *)(ip + 10) > data_end)
			return 1;
		if (ip[9] == IPPROTO_UDP_) {
			__u32 ihl = (ip[0] & 0x0f) * 4;
			__u8 *udp = ip + ihl;
			if (ihl < 20 || (void *)(udp + 4) > data_end)
				return 1;
			return *(__be16 *)(udp + 2) == DHCP_CLIENT_PORT_BE;
		}
		return ip[9] == IPPROTO_ICMP_;
	}
	if (proto == ETH_P_IPV6_BE) {
		__u8 *ip6 = l3;
		if ((void *)(ip6 + 7) > data_end)
			return 1;
		return ip6[6] == IPPROTO_ICMPV6_;
	}
	return 0;
}

SEC("xdp.frags")
int xmv_classify(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct xmv_counters *c = bpf_map_lookup_elem(&xmv_counters, &zero);
	if (!c)
		return XDP_PASS; /* cannot happen: a one-entry array always has entry 0 */
	c->seen++;

	struct xmv_key key = { .vid = 0 };
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end) {
		c->malformed++;
		report(XMV_EVENT_MALFORMED, ctx, &key);
		return XDP_PASS;
	}

	__builtin_memcpy(key.mac, eth->h_dest, ETH_ALEN);

	__be16 proto = eth->h_proto;
	void *l3 = eth + 1;
	if (proto == ETH_P_8021AD_BE) {
		c->pass_qinq++;
		return XDP_PASS;
	}
	if (proto == ETH_P_8021Q_BE) {
		struct vlan_tag *tag = (void *)(eth + 1);
		if ((void *)(tag + 1) > data_end) {
			c->malformed++;
			report(XMV_EVENT_MALFORMED, ctx, &key);
			return XDP_PASS;
		}
		c->tagged++;
		if (tag->inner_proto == ETH_P_8021Q_BE || tag->inner_proto == ETH_P_8021AD_BE) {
			c->pass_qinq++;
			return XDP_PASS;
		}
		key.vid = bpf_ntohs(tag->tci) & 0x0fff;
		proto = tag->inner_proto;
		l3 = tag + 1;
	}

	if (key.mac[0] & 1) {
		c->pass_bcast_mcast++;
		return XDP_PASS;
	}

	__u32 *slot = bpf_map_lookup_elem(&xmv_slots, &key);
	if (!slot) {
		c->pass_miss++;
		return XDP_PASS;
	}
	if (is_control(proto, l3, data_end)) {
		c->pass_control++;
		return XDP_PASS;
	}
	__u32 *claimed = bpf_map_lookup_elem(&xmv_claimed, slot);
	if (!claimed || *claimed != XMV_CLAIMED) {
		c->pass_unclaimed++;
		return XDP_PASS;
	}
	c->hit++;

	__u32 index = xmv_config.demux == XMV_DEMUX_USER
			      ? ctx->rx_queue_index
			      : *slot * xmv_config.queues + ctx->rx_queue_index;
	__u32 *max_len = bpf_map_lookup_elem(&xmv_xsk_max_len, &index);
	if (max_len && *max_len && bpf_xdp_get_buff_len(ctx) > *max_len) {
		c->pass_too_big++;
		report(XMV_EVENT_TOO_BIG, ctx, &key);
		return XDP_PASS;
	}
	long verdict = bpf_redirect_map(&xmv_xsks, index, XDP_PASS);
	if (verdict == XDP_REDIRECT)
		c->redirected++;
	else {
		c->pass_no_socket++;
		report(XMV_EVENT_REDIRECT_FAILED, ctx, &key);
	}
	return verdict;
}

/* How libxdp's multi-program dispatcher runs the classifier when it shares the interface with
 * other XDP programs (BTF metadata its loader reads; the daemon can override both): after
 * programs of a lower priority, such as filters (xdp-filter runs at 10), and on to the next
 * program for every frame it passes to the kernel. */
struct {
	__uint(priority, XMV_RUN_PRIORITY);
	__uint(XDP_PASS, 1);
} _xmv_classify SEC(".xdp_run_config");

/* The ceiling of the benchmark: what the NIC path costs with nothing done. */
SEC("xdp")
int xmv_drop_all(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct xmv_counters *c = bpf_map_lookup_elem(&xmv_counters, &zero);
	if (c)
		c->seen++;
	return XDP_DROP;
}

/* The benchmark's AF_XDP rxdrop anchor: every frame to its queue's socket, no lookup, so what
 * it costs is the redirect and the socket path alone, the ceiling of any mode that delivers
 * into AF_XDP sockets. */
SEC("xdp")
int xmv_redirect_all(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct xmv_counters *c = bpf_map_lookup_elem(&xmv_counters, &zero);
	if (!c)
		return XDP_PASS; /* cannot happen: a one-entry array always has entry 0 */
	c->seen++;
	long verdict = bpf_redirect_map(&xmv_xsks, ctx->rx_queue_index, XDP_PASS);
	if (verdict == XDP_REDIRECT)
		c->redirected++;
	else
		c->pass_no_socket++;
	return verdict;
}

/* Never attached: `doctor` loads it to learn whether this kernel runs freplace
 * (BPF_PROG_TYPE_EXT) programs, the pieces libxdp's multi-program dispatcher is made of. */
SEC("freplace/xmv_drop_all")
int xmv_freplace_probe(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
