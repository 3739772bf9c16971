/* A control loop around a policy that nmrl compiled to C (actor.c + actor.h).
 *
 * Each period: read the sensors into an observation, run the policy, write the action to the
 * actuators, sleep until the next period. The policy needs no allocator, no stdio and no thread:
 * nmrl_policy_act() uses only its arguments and the stack, so it can run in a real-time thread or an
 * interrupt-free loop on a microcontroller. Replace read_sensors() and write_actuators() with your
 * robot's I/O; everything else can stay.
 *
 *   ./controller [--rate HZ] [--steps N]        run the loop (a synthetic sensor signal), print timings
 *   ./controller --replay OBS.bin ACTIONS.bin   recorded float32 observations in, actions out, as fast
 *                                               as possible (check the build against Python)
 *
 * POSIX for the clock and the sleep (CLOCK_MONOTONIC, clock_nanosleep); stdio only for this demo. */
#define _POSIX_C_SOURCE 200112L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actor.h"

#define OBS_DIM NMRL_POLICY_OBS_DIM
#define ACT_DIM NMRL_POLICY_ACT_DIM

/* The robot's I/O. Here: a smooth synthetic signal in, nothing out. Return 0 when no reading. */
static int read_sensors(long step, float obs[OBS_DIM])
{
    int i;
    for (i = 0; i < OBS_DIM; ++i) obs[i] = 0.5f * sinf(0.01f * (float)step + 0.3f * (float)i);
    return 1;
}

static void write_actuators(const float action[ACT_DIM])
{
    /* The policy's output is already scaled to the action bounds the file states
     * (NMRL_POLICY_ACTION_LOW/HIGH); send it to the motors here. */
    (void)action;
}

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int replay(const char *obs_path, const char *action_path)
{
    float obs[OBS_DIM], action[ACT_DIM];
    long n = 0;
    FILE *in = fopen(obs_path, "rb"), *out = fopen(action_path, "wb");
    if (!in || !out) {
        fprintf(stderr, "cannot open %s or %s\n", obs_path, action_path);
        return 1;
    }
    while (fread(obs, sizeof obs, 1, in) == 1) {
        nmrl_policy_act(obs, action);
        if (fwrite(action, sizeof action, 1, out) != 1) return 1;
        ++n;
    }
    fclose(in);
    if (fclose(out) != 0) return 1;
    fprintf(stderr, "replayed %ld observations\n", n);
    return 0;
}

static int control_loop(double rate_hz, long steps)
{
    float obs[OBS_DIM], action[ACT_DIM];
    double worst = 0.0, total = 0.0;
    long step, late = 0;
    const long period_ns = (long)(1e9 / rate_hz);
    struct timespec next;
    int i;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (step = 0; step < steps; ++step) {
        double began, spent;
        if (!read_sensors(step, obs)) break;
        began = now_us();
        nmrl_policy_act(obs, action);
        spent = now_us() - began;
        write_actuators(action);
        total += spent;
        if (spent > worst) worst = spent;
        /* Absolute deadlines: a slow step does not shift every later one. */
        next.tv_nsec += period_ns;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            ++next.tv_sec;
        }
        {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec > next.tv_sec || (now.tv_sec == next.tv_sec && now.tv_nsec > next.tv_nsec)) ++late;
            else clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        }
    }
    printf("policy %s (%s, %s): %d obs -> %d actions\n", NMRL_POLICY_ENV_ID, NMRL_POLICY_SPARSITY, NMRL_POLICY_DTYPE,
           OBS_DIM, ACT_DIM);
    printf("%ld steps at %.0f Hz: policy mean %.2f us, worst %.2f us; %ld periods overran\n", step, rate_hz,
           step ? total / (double)step : 0.0, worst, late);
    printf("last action:");
    for (i = 0; i < ACT_DIM; ++i) printf(" %.6f", action[i]);
    printf("\n");
    return 0;
}

int main(int argc, char **argv)
{
    double rate = 500.0;
    long steps = 1000;
    int i;
    for (i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--replay") == 0 && i + 2 < argc) return replay(argv[i + 1], argv[i + 2]);
        if (strcmp(argv[i], "--rate") == 0 && i + 1 < argc) rate = atof(argv[++i]);
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = atol(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--rate HZ] [--steps N] | --replay OBS.bin ACTIONS.bin\n", argv[0]);
            return 2;
        }
    }
    if (!(rate > 0.0) || steps < 1) {
        fprintf(stderr, "--rate must be > 0 and --steps >= 1\n");
        return 2;
    }
    return control_loop(rate, steps);
}
