/*
 * LD_PRELOAD shim for Janus in a loopback-only network namespace.
 *
 * Janus 1.1.2 skips every interface flagged IFF_LOOPBACK when it picks the
 * addresses to gather ICE candidates on (src/ice.c, janus_ice_setup_local,
 * "Skip loopback interfaces"), and no setting turns that off; libnice's own
 * fallback skips loopback too. With only `lo`, candidate gathering fails
 * ("Error gathering candidates" / 490 "Error setting ICE locally").
 * This shim clears IFF_LOOPBACK in getifaddrs() results, so 127.0.0.1 becomes
 * an ordinary host-candidate address (janus.jcfg enforces it with
 * ice_enforce_list = "127.0.0.1").
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stddef.h>

int getifaddrs(struct ifaddrs **ifap) {
	static int (*real_getifaddrs)(struct ifaddrs **) = NULL;
	if(real_getifaddrs == NULL)
		real_getifaddrs = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
	if(real_getifaddrs == NULL)
		return -1;
	int ret = real_getifaddrs(ifap);
	if(ret == 0 && ifap != NULL) {
		for(struct ifaddrs *ifa = *ifap; ifa != NULL; ifa = ifa->ifa_next)
			ifa->ifa_flags &= ~IFF_LOOPBACK;
	}
	return ret;
}
